"""seqmodels' command line: python main.py {fit,validate,test,predict} --config configs/X.yaml"""

from seqmodels.cli import main

if __name__ == "__main__":
    main()
