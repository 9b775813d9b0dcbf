/* _ngramscorer.h: what the Scorer's files (_ngramscorer*.c) share, private to the module
 * (hidden visibility, nothing exported; the module itself is in _ngramcore.c): the Scorer and
 * its working state, and the lookups a span runs per feature (group_add, group_put, seq_id,
 * seq_holds_id): as `static inline` here they stay inlined in every file that runs them, as
 * they were when the Scorer was one file. */

#ifndef PACKGATE_NGRAMSCORER_H
#define PACKGATE_NGRAMSCORER_H

#include "_ngramcore.h"

typedef struct {
    PyObject_HEAD
    Py_buffer weights; /* float32[mask + 1], owned by the Python object that exported it */
    uint32_t mask;
    uint32_t *seen; /* open-addressing set of bucket+1 for the group being summed */
    Py_ssize_t seen_cap;
    uint32_t seen_mask;
    Scratch text;
    uint64_t seed_words, seed_chars, seed_tail;
    int char_sizes[MAX_CHAR_SIZES];
    int n_char_sizes;
    Spans tokens, sentences, segs;
    struct Terms *terms, *span_terms; /* the pooled text's terminators; a span's (extract) */
    Py_UCS4 *joined;
    Py_ssize_t joined_cap;
    struct Pool *pool; /* the whole variant's features, reused by every span (pooled_logit) */
} Scorer;

/* One feature group being summed: distinct buckets, their weight sum, optionally their ids.
 * It carries its own copies of the set and table pointers: the hot loops work on a local copy,
 * which the compiler keeps in registers (through `self`, a store into the set could alias the
 * Scorer's fields and force reloads, and the sum would live in memory). */
typedef struct {
    double sum;
    Py_ssize_t n;
    PyObject *ids; /* list of bucket ids, or NULL when only the sum is wanted */
    uint32_t *seen; /* open-addressing set of bucket + 1 */
    uint32_t seen_mask, mask;
    const float *weights;
} Group;

/* Grow `ptr` to hold `n` elements, or jump to the function's `nomem` label. */
#define GROW(ptr, n)                                                       \
    do {                                                                   \
        void *grown_ = PyMem_Realloc((ptr), (size_t)(n) * sizeof(*(ptr))); \
        if (!grown_) goto nomem;                                           \
        (ptr) = grown_;                                                    \
    } while (0)

/* _ngramscorer_extract.c: start a group of at most `expected` features; append a bucket id. */
NGC_INTERNAL int ngscorer_group_open(Scorer *self, Group *g, PyObject *ids,
                                     Py_ssize_t expected);
NGC_INTERNAL int ngscorer_append_id(PyObject *ids, uint32_t b);

__attribute__((always_inline)) static inline int group_add(Group *g, uint64_t h) {
    uint32_t b = (uint32_t)(fmix64(h) & g->mask);
    /* bucket ids are uniform hash bits already: their low bits index the set directly */
    uint32_t i = b & g->seen_mask;
    while (g->seen[i]) {
        if (g->seen[i] == b + 1) return 0;
        i = (i + 1) & g->seen_mask;
    }
    g->seen[i] = b + 1;
    g->n++;
    g->sum += g->weights[b];
    return g->ids ? ngscorer_append_id(g->ids, b) : 0;
}

/* A feature whose bucket and weight are already known (computed once per text, see Pool). */
typedef struct {
    uint32_t bucket;
    float weight;
} Feat;

static inline uint32_t bucket_of(uint32_t mask, uint64_t h) { return (uint32_t)(fmix64(h) & mask); }

static inline Feat feat_of(const Group *g, uint64_t h) {
    uint32_t b = (uint32_t)(fmix64(h) & g->mask);
    return (Feat){b, g->weights[b]};
}

__attribute__((always_inline)) static inline void group_put(Group *g, Feat f) {
    uint32_t i = f.bucket & g->seen_mask;
    while (g->seen[i]) {
        if (g->seen[i] == f.bucket + 1) return;
        i = (i + 1) & g->seen_mask;
    }
    g->seen[i] = f.bucket + 1;
    g->n++;
    g->sum += f.weight;
}

static inline double group_value(const Group *g) { return g->n ? g->sum / sqrt((double)g->n) : 0.0; }

/* Where a text's terminators are, in order, then the text's end (so a search for the next one
 * always stops). The sentence scans (_ngramscorer_sentences.c) only act at terminators; they
 * found them by testing every character with a branch, each scan on its own (together ~7% of
 * pooled scoring); this one pass has no branch per character, and a variant's segments and its
 * windows' sentence pieces both read it. */
typedef struct Terms {
    int32_t *pos;
    Py_ssize_t len, cap;
} Terms;

/* Pooling reuses work across spans. A variant's spans (its windows and sentences) cover its
 * text about three times over, and extracting each span from scratch hashed and de-duplicated
 * every feature three times. Here the features of the whole text are computed once, in two
 * sequences: the words (token k's unigram at 2k, its bigram with token k - 1 at 2k - 1) and
 * the character n-grams of the whole joined text (a window's tail group, over its last
 * sentence piece only, is hashed for the window: see pool_span). A span's whole
 * tokens are a contiguous range of each sequence (its joined text is a slice of the whole one),
 * and in a range [a, b) the distinct buckets are the features whose previous occurrence in the
 * sequence lies before a: a branch-free sum, no set. The few other features of a span (the
 * pieces of tokens a window cuts, the sentences' first words) are hashed, checked against the
 * range by following their bucket's chain of occurrences (seq_holds_id), and de-duplicated with
 * the usual set. Only a
 * single character n-gram size takes this path (the shipped model's); others extract each span
 * from scratch, as `logit` does. */
typedef struct {
    uint32_t key; /* bucket + 1, 0 when empty */
    int32_t id;   /* one slot, one cache line: a probe that finds the key has its id */
} Slot;

typedef struct {
    uint32_t *bucket; /* each feature's bucket and weight, apart: seq_range reads the weights */
    float *w;
    int32_t *prev;  /* previous index with the same bucket, or -1 */
    Py_ssize_t len, cap;
    Slot *slots; /* bucket + 1 -> id (open addressing), key 0 when empty */
    Py_ssize_t kcap;
    uint32_t kmask; /* of the part in use for the current text */
    int32_t *next;  /* next index with the same bucket, or INT32_MAX */
    int32_t *first; /* per id: its first index */
    int32_t *at;    /* per id: one of its indexes, where seq_holds_id left off */
    int32_t ids_used;
} Seq;

typedef struct Pool {
    Spans tok;           /* the whole text's tokens */
    /* Where the whole text splits into sentence pieces (split_sentences' split points: the
     * piece before ends at start, the next begins at end), found once for all windows. */
    Spans splits;
    int splits_ready;
    Py_ssize_t text_end;
    Py_ssize_t tcap;     /* capacity of the per-token arrays */
    uint64_t *hw;        /* FNV state after each token (word seed) */
    Py_ssize_t *jo;      /* offset of each token in the joined text */
    Py_UCS4 *joined, *sj; /* the whole text's joined tokens; one span's */
    Py_ssize_t jcap;
    Seq words, chars;
    /* "^" + token k (a piece's first word), worked out once per token: each sentence's first
     * word is one in the sentence's span and in both windows over it */
    Feat *caret;
    int32_t *caret_id; /* its id in `words`, or -1 */
    uint8_t *caret_ok;
    /* before[x]: how many tokens start before character x, for x in [0, text_end]: the first
     * token at or after x, asked for every span's ends and every piece's start (a binary
     * search over the tokens mispredicted about half its steps) */
    int32_t *before;
    Py_ssize_t bcap;
} Pool;

/* The id of a bucket in q's map, or -1. */
static inline int32_t seq_id(const Seq *q, uint32_t bucket) {
    uint32_t mask = q->kmask;
    for (uint32_t i = bucket & mask;; i = (i + 1) & mask) {
        if (q->slots[i].key == bucket + 1) return q->slots[i].id;
        if (!q->slots[i].key) return -1;
    }
}

/* Whether the bucket with this id (seq_id; -1: none) sits at a position in [a, b) of q: whether
 * its last index before b is at least a. That index is found by following next[] from where
 * the previous question about this bucket left off (or from its first index when that lies at
 * or past b): the spans are visited in two runs (windows, then sentences), each with rising
 * ends, so a run follows each bucket's chain once instead of searching its occurrences anew
 * for every span (and no sorted occurrence lists are built). */
static inline int seq_holds_id(Seq *q, int32_t id, Py_ssize_t a, Py_ssize_t b) {
    if (a >= b || id < 0) return 0;
    int32_t k = q->at[id];
    if (k >= b) k = q->first[id];
    if (k >= b) return 0;
    while (q->next[k] < b) k = q->next[k];
    q->at[id] = k;
    return k >= a;
}

/* _ngramscorer_sentences.c: segments.py's spans and split_sentences' pieces. */
NGC_INTERNAL void ngscorer_terms_free(Terms *m);
NGC_INTERNAL int ngscorer_find_splits(const Text *t, const Terms *m, Spans *out);
NGC_INTERNAL int ngscorer_split_sentences(const Text *t, Terms *m, Spans *out);
NGC_INTERNAL int ngscorer_pieces_from_splits(const Spans *splits, const Text *t, Spans *out);
NGC_INTERNAL int ngscorer_find_segments(const Text *t, Terms *m, Spans *out,
                                        Py_ssize_t *nwindows);

/* _ngramscorer_extract.c: the three hashed groups of one span, from scratch. */
NGC_INTERNAL int ngscorer_extract(Scorer *self, const Text *t, Group groups[3],
                                  PyObject *ids[3]);

/* _ngramscorer_seq.c: a pooled text's feature sequences. */
NGC_INTERNAL void ngscorer_seq_free(Seq *q);
NGC_INTERNAL int ngscorer_seq_reserve(Seq *q, Py_ssize_t len);
NGC_INTERNAL void ngscorer_seq_index(Seq *q, const float *weights);
NGC_INTERNAL void ngscorer_seq_range(const Seq *q, Py_ssize_t a, Py_ssize_t b, double *sum,
                                     Py_ssize_t *n);

/* _ngramscorer_pool.c: pooled_logit and its pool; _ngramscorer.c: the Scorer's scratch. */
NGC_INTERNAL void ngscorer_pool_free(Pool *p);
NGC_INTERNAL PyObject *ngscorer_pooled_logit(Scorer *self, PyObject *args, PyObject *kwargs);
NGC_INTERNAL void ngscorer_trim(Scorer *self);

#endif
