/* WordTokenizer's fast path (seqmodels/preprocessing.py): the split of the `tokenizers` library's
   Whitespace pre-tokenizer (the regex \w+|[^\w\s]+: runs of word characters, runs of characters that are
   neither word characters nor whitespace) and its WordLevel model's lookup, in one pass over a text's
   UTF-8 bytes. The library's encoder spent 4.7 s on the 50k IMDB reviews (CPU-3), most of it building
   per-token structures this caller never reads. Which class a character is in, this file does not decide:
   the caller passes a table of every code point's class, each learnt from the library itself.

   A table maps byte strings to 64-bit values: a vocabulary's ids, or a count per word while fitting one.
   Open addressing, FNV-1a hashes, the strings copied into the table's own arena. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t offset, length, value;
    uint64_t hash;
} slot;

typedef struct {
    slot *slots;     /* capacity entries, length -1 where empty */
    int64_t capacity, size;
    char *arena;     /* the strings, back to back */
    int64_t arena_size, arena_used;
} table;

static uint64_t fnv1a(const char *s, int64_t n) {
    uint64_t h = 14695981039346656037ull;
    for (int64_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int grow(table *t, int64_t capacity) {
    slot *slots = malloc((size_t)capacity * sizeof(slot));
    if (!slots)
        return 0;
    for (int64_t i = 0; i < capacity; i++) slots[i].length = -1;
    for (int64_t i = 0; i < t->capacity; i++) {
        if (t->slots[i].length < 0)
            continue;
        int64_t j = (int64_t)(t->slots[i].hash & (uint64_t)(capacity - 1));
        while (slots[j].length >= 0) j = (j + 1) & (capacity - 1);
        slots[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = slots;
    t->capacity = capacity;
    return 1;
}

void *table_new(void) {
    table *t = calloc(1, sizeof(table));
    if (t && !grow(t, 1024)) {
        free(t);
        return NULL;
    }
    return t;
}

void table_free(void *handle) {
    table *t = handle;
    if (!t)
        return;
    free(t->slots);
    free(t->arena);
    free(t);
}

/* The slot of s, added with value `value` if absent; NULL where memory ran out. */
static slot *find_or_add(table *t, const char *s, int64_t n, uint64_t h, int64_t value) {
    int64_t j = (int64_t)(h & (uint64_t)(t->capacity - 1));
    for (; t->slots[j].length >= 0; j = (j + 1) & (t->capacity - 1)) {
        slot *e = &t->slots[j];
        if (e->hash == h && e->length == n && memcmp(t->arena + e->offset, s, (size_t)n) == 0)
            return e;
    }
    if (2 * (t->size + 1) > t->capacity) {  /* at most half full */
        if (!grow(t, 2 * t->capacity))
            return NULL;
        return find_or_add(t, s, n, h, value);
    }
    if (t->arena_used + n > t->arena_size) {
        int64_t size = t->arena_size ? 2 * t->arena_size : 1 << 16;
        while (size < t->arena_used + n) size *= 2;
        char *arena = realloc(t->arena, (size_t)size);
        if (!arena)
            return NULL;
        t->arena = arena;
        t->arena_size = size;
    }
    memcpy(t->arena + t->arena_used, s, (size_t)n);
    t->slots[j] = (slot){t->arena_used, n, value, h};
    t->arena_used += n;
    t->size++;
    return &t->slots[j];
}

static const slot *find(const table *t, const char *s, int64_t n) {
    const uint64_t h = fnv1a(s, n);
    for (int64_t j = (int64_t)(h & (uint64_t)(t->capacity - 1)); t->slots[j].length >= 0; j = (j + 1) & (t->capacity - 1)) {
        const slot *e = &t->slots[j];
        if (e->hash == h && e->length == n && memcmp(t->arena + e->offset, s, (size_t)n) == 0)
            return e;
    }
    return NULL;
}

/* Adds n strings (strings[offsets[i] .. offsets[i + 1]]) with their values. Returns 0 where memory ran out. */
int64_t table_put(void *handle, int64_t n, const char *strings, const int64_t *offsets, const int64_t *values) {
    table *t = handle;
    for (int64_t i = 0; i < n; i++) {
        const char *s = strings + offsets[i];
        const int64_t len = offsets[i + 1] - offsets[i];
        slot *e = find_or_add(t, s, len, fnv1a(s, len), values[i]);
        if (!e)
            return 0;
        e->value = values[i];
    }
    return 1;
}

int64_t table_size(const void *handle) { return ((const table *)handle)->size; }
int64_t table_bytes(const void *handle) { return ((const table *)handle)->arena_used; }

/* The table's strings (back to back in `strings`, table_bytes of them, bounds in offsets[0 .. size]) and
   values, in no particular order. */
void table_dump(const void *handle, char *strings, int64_t *offsets, int64_t *values) {
    const table *t = handle;
    int64_t k = 0, used = 0;
    offsets[0] = 0;
    for (int64_t i = 0; i < t->capacity; i++) {
        const slot *e = &t->slots[i];
        if (e->length < 0)
            continue;
        memcpy(strings + used, t->arena + e->offset, (size_t)e->length);
        used += e->length;
        values[k] = e->value;
        offsets[++k] = used;
    }
}

/* The class of the character starting at t[i] (classes[code point]: 0 whitespace, 1 a word character,
   2 anything else) and, in *size, its length in bytes. The text is valid UTF-8 (Python encoded it). */
static inline int char_class(const unsigned char *t, int64_t i, int64_t n, const uint8_t *classes, int64_t *size) {
    const unsigned c = t[i];
    uint32_t code = c;
    *size = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (i + *size > n)  /* never for valid UTF-8; a cut sequence reads as one other character */
        *size = 1;
    else if (*size == 2)
        code = ((c & 0x1Fu) << 6) | (t[i + 1] & 0x3Fu);
    else if (*size == 3)
        code = ((c & 0x0Fu) << 12) | ((t[i + 1] & 0x3Fu) << 6) | (t[i + 2] & 0x3Fu);
    else if (*size == 4)
        code = ((c & 0x07u) << 18) | ((t[i + 1] & 0x3Fu) << 12) | ((t[i + 2] & 0x3Fu) << 6) | (t[i + 3] & 0x3Fu);
    return code < 0x110000 ? classes[code] : 2;
}

/* Runs `body` for each word of text[0 .. n), with `start` and `length` its bytes. */
#define FOR_EACH_WORD(text, n, classes, start, length, body)                                        \
    for (int64_t i_ = 0; i_ < (n);) {                                                               \
        int64_t size_;                                                                              \
        const int k_ = char_class((const unsigned char *)(text), i_, (n), (classes), &size_);      \
        if (k_ == 0) {                                                                              \
            i_ += size_;                                                                            \
            continue;                                                                               \
        }                                                                                           \
        int64_t j_ = i_ + size_;                                                                    \
        while (j_ < (n) && char_class((const unsigned char *)(text), j_, (n), (classes), &size_) == k_) \
            j_ += size_;                                                                            \
        const int64_t start = i_, length = j_ - i_;                                                 \
        body                                                                                        \
        i_ = j_;                                                                                    \
    }

/* The ids of n texts (text i: buffer[bounds[i] .. bounds[i + 1]]), back to back in ids (room for
   bounds[n] - bounds[0] of them: a text has at most one word a byte), text i's at ids[ends[i - 1] ..
   ends[i]) (ends[-1] = 0). Words not in the table get `unknown`. classes: as for char_class, for
   every code point the texts hold. Returns the number of ids. */
int64_t table_encode(const void *handle, const uint8_t *classes, int64_t n, const char *buffer, const int64_t *bounds,
                     int64_t unknown, int32_t *ids, int64_t *ends) {
    const table *t = handle;
    int64_t count = 0;
    for (int64_t i = 0; i < n; i++) {
        const char *text = buffer + bounds[i];
        FOR_EACH_WORD(text, bounds[i + 1] - bounds[i], classes, start, length, {
            const slot *e = find(t, text + start, length);
            ids[count++] = (int32_t)(e ? e->value : unknown);
        })
        ends[i] = count;
    }
    return count;
}

/* Adds one to each word's value, for the words of n texts (as for table_encode); new words start at 0.
   Returns 0 where memory ran out. */
int64_t table_count(void *handle, const uint8_t *classes, int64_t n, const char *buffer, const int64_t *bounds) {
    table *t = handle;
    for (int64_t i = 0; i < n; i++) {
        const char *text = buffer + bounds[i];
        FOR_EACH_WORD(text, bounds[i + 1] - bounds[i], classes, start, length, {
            slot *e = find_or_add(t, text + start, length, fnv1a(text + start, length), 0);
            if (!e)
                return 0;
            e->value++;
        })
    }
    return 1;
}
