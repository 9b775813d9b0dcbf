/* _ngramscorer.c: the hashed n-gram scorer of the prompt-injection model (see _ngramcore.c).
 */

#include "_ngramcore.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* ------------------------------------------------------------------------------------------ */
/* Scorer: the hashed weight table and the feature extraction that reads it.                  */

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

/* Start a group of at most `expected` features. Distinct buckets are found with a set sized
 * for this group (at most half full, a few KB for a 1 KB text, so it stays in L1 cache)
 * rather than a stamp array as large as the table, which costs a cache miss per feature. */
static int group_open(Scorer *self, Group *g, PyObject *ids, Py_ssize_t expected) {
    g->sum = 0.0;
    g->n = 0;
    g->ids = ids;
    Py_ssize_t size = 64;
    while (size < 2 * expected) size <<= 1;
    if (size > self->seen_cap) {
        GROW(self->seen, size);
        self->seen_cap = size;
    }
    memset(self->seen, 0, (size_t)size * sizeof(uint32_t));
    g->seen = self->seen;
    g->seen_mask = (uint32_t)(size - 1);
    g->mask = self->mask;
    g->weights = (const float *)self->weights.buf;
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static int append_id(PyObject *ids, uint32_t b) {
    PyObject *id = PyLong_FromUnsignedLong(b);
    if (!id || PyList_Append(ids, id) < 0) {
        Py_XDECREF(id);
        return -1;
    }
    Py_DECREF(id);
    return 0;
}

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
    return g->ids ? append_id(g->ids, b) : 0;
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

/* . ! ? : and newline are all below 64: one bit test instead of five comparisons. Without a
 * branch on c < 64: spaces are below it and letters above, so that branch mispredicted at
 * every word (the scans below spent most of their time there). */
#define TERMINATORS \
    ((1ULL << '.') | (1ULL << '!') | (1ULL << '?') | (1ULL << ':') | (1ULL << '\n'))
static inline int is_terminator(Py_UCS4 c) { return (int)(TERMINATORS >> (c & 63) & (c < 64)); }

/* t's bounds without the whitespace around it. */
static inline void stripped(const Text *t, Py_ssize_t *s0, Py_ssize_t *s1) {
    Py_ssize_t a = t->start, b = t->end;
    while (a < b && Py_UNICODE_ISSPACE(CH(t, a))) a++;
    while (b > a && Py_UNICODE_ISSPACE(CH(t, b - 1))) b--;
    *s0 = a;
    *s1 = b;
}

/* Where a text's terminators are, in order, then the text's end (so a search for the next one
 * always stops). The sentence scans below only act at terminators; they found them by testing
 * every character with a branch, each scan on its own (together ~7% of pooled scoring); this
 * one pass has no branch per character, and a variant's segments and its windows' sentence
 * pieces both read it. */
typedef struct Terms {
    int32_t *pos;
    Py_ssize_t len, cap;
} Terms;

static int find_terms(const Text *t, Terms *out) {
    Py_ssize_t need = t->end - t->start + 1;
    if (need > out->cap) {
        GROW(out->pos, need);
        out->cap = need;
    }
    int32_t *pos = out->pos;
    Py_ssize_t m = 0;
    for (Py_ssize_t i = t->start; i < t->end; i++) {
        pos[m] = (int32_t)i;
        m += is_terminator(CH(t, i));
    }
    pos[m] = (int32_t)t->end;
    out->len = m;
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static void terms_free(Terms *m) {
    if (m) PyMem_Free(m->pos);
    PyMem_Free(m);
}

/* split_sentences' split points over t: (where a piece ends, where the next begins). `m`
 * holds the terminators of t, or of a text t starts and ends inside. */
static int find_splits(const Text *t, const Terms *m, Spans *out) {
    out->len = 0;
    Py_ssize_t s0, s1, r = 0;
    stripped(t, &s0, &s1);
    Py_ssize_t i = s0;
    while (i < s1) {
        while (m->pos[r] < i) r++;
        i = m->pos[r]; /* the next terminator */
        if (i >= s1) break;
        Py_UCS4 c = CH(t, i);
        Py_ssize_t j = i;
        if ((c == '.' || c == '!' || c == '?' || c == ':') && i + 1 < s1 &&
            Py_UNICODE_ISSPACE(CH(t, i + 1))) {
            j = i + 1;
            while (j < s1 && Py_UNICODE_ISSPACE(CH(t, j))) j++;
        } else if (c == '\n') {
            while (j < s1 && CH(t, j) == '\n') j++;
        } else {
            i++;
            continue;
        }
        if (ngc_spans_push(out, i, j) < 0) return -1;
        i = j;
    }
    return 0;
}

/* Sentences of the text with surrounding whitespace stripped, split where Python's
 * re.split(r"[.!?:]\s+|\n+", ...) splits: one span per piece (pieces may be empty). The
 * split points, turned in place into the pieces between them. */
static int split_sentences(const Text *t, Terms *m, Spans *out) {
    if (find_terms(t, m) < 0 || find_splits(t, m, out) < 0) return -1;
    Py_ssize_t s0, s1;
    stripped(t, &s0, &s1);
    Py_ssize_t piece = s0;
    for (Py_ssize_t k = 0; k < out->len; k++) {
        Py_ssize_t next = out->items[k].end;
        out->items[k].end = out->items[k].start;
        out->items[k].start = piece;
        piece = next;
    }
    return ngc_spans_push(out, piece, s1);
}

/* split_sentences(t) for a span t of the text the splits were found on. The span, stripped,
 * starts and ends with a non-space character, so the whole text's scan reaches its start
 * fresh (no run of spaces or newlines it skips covers it) and every run it skips inside the
 * span ends before the span's last character: the span's split points are the text's that
 * lie in it, each with room for a character after it. */
static int pieces_from_splits(const Spans *splits, const Text *t, Spans *out) {
    out->len = 0;
    Py_ssize_t s0, s1;
    stripped(t, &s0, &s1);
    Py_ssize_t lo = 0, hi = splits->len, piece = s0;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (splits->items[mid].start < s0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (Py_ssize_t k = lo; k < splits->len && splits->items[k].start + 1 < s1; k++) {
        if (ngc_spans_push(out, piece, splits->items[k].start) < 0) return -1;
        piece = splits->items[k].end;
    }
    return ngc_spans_push(out, piece, s1);
}

static int reserve_joined(Scorer *self, Py_ssize_t nchars) {
    if (nchars > self->joined_cap) {
        GROW(self->joined, nchars);
        self->joined_cap = nchars;
    }
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* Word unigrams and bigrams of tokens[first:last] into g, hashed from `seed`. */
static int add_words(Scorer *self, Group *g, const Text *t, Py_ssize_t first, Py_ssize_t last,
                     uint64_t seed) {
    const Span *tok = self->tokens.items;
    Group acc = *g;
    int failed = 0;
    uint64_t prev = 0;
    for (Py_ssize_t k = first; k < last && !failed; k++) {
        uint64_t h = hash_span(seed, t, tok[k]);
        failed = group_add(&acc, h) < 0 ||
                 (k > first && group_add(&acc, hash_span(fnv(prev, ' '), t, tok[k])) < 0);
        prev = h;
    }
    *g = acc;
    return failed ? -1 : 0;
}

/* The three hashed groups of t; fills `groups` (words, chars, tail). */
static int extract(Scorer *self, const Text *t, Group groups[3], PyObject *ids[3]) {
    if (!self->span_terms && !(self->span_terms = PyMem_Calloc(1, sizeof(Terms)))) {
        PyErr_NoMemory();
        return -1;
    }
    if (ngc_tokenize(t, &self->tokens) < 0 ||
        split_sentences(t, self->span_terms, &self->sentences) < 0)
        return -1;
    const Span *tok = self->tokens.items;
    Py_ssize_t ntok = self->tokens.len;
    Py_ssize_t joined_len = 1;
    for (Py_ssize_t k = 0; k < ntok; k++) joined_len += tok[k].end - tok[k].start + 1;
    if (reserve_joined(self, joined_len + 1) < 0) return -1;

    /* words: unigrams, bigrams over the whole text, and "^" + each sentence's first word */
    Group *words = &groups[0];
    if (group_open(self, words, ids[0], 2 * ntok + self->sentences.len) < 0) return -1;
    if (add_words(self, words, t, 0, ntok, self->seed_words) < 0) return -1;
    uint64_t caret = fnv(self->seed_words, '^');
    Py_ssize_t k = 0;
    for (Py_ssize_t p = 0; p < self->sentences.len; p++) {
        Span piece = self->sentences.items[p];
        while (k < ntok && tok[k].start < piece.start) k++;
        if (k < ntok && tok[k].start < piece.end) {
            if (group_add(words, hash_span(caret, t, tok[k])) < 0) return -1;
        }
    }

    /* tail: the last sentence's unigrams and bigrams, when there is more than one sentence */
    Group *tail = &groups[2];
    Py_ssize_t first = ntok;
    if (self->sentences.len > 1) {
        Py_ssize_t from = self->sentences.items[self->sentences.len - 1].start;
        first = 0;
        while (first < ntok && tok[first].start < from) first++;
    }
    if (group_open(self, tail, ids[2], 2 * (ntok - first)) < 0 ||
        add_words(self, tail, t, first, ntok, self->seed_tail) < 0)
        return -1;

    /* chars: n-grams of " " + " ".join(tokens) + " " */
    Py_UCS4 *j = self->joined;
    Py_ssize_t len = 0;
    j[len++] = ' ';
    for (Py_ssize_t m = 0; m < ntok; m++) {
        if (m) j[len++] = ' ';
        for (Py_ssize_t i = tok[m].start; i < tok[m].end; i++) j[len++] = CH(t, i);
    }
    j[len++] = ' ';
    Group *chars = &groups[1];
    if (group_open(self, chars, ids[1], self->n_char_sizes * len) < 0) return -1;
    Group acc = *chars;
    int failed = 0;
    for (int s = 0; s < self->n_char_sizes && !failed; s++) {
        Py_ssize_t n = self->char_sizes[s];
        for (Py_ssize_t i = 0; i + n <= len && !failed; i++) {
            uint64_t h = self->seed_chars;
            for (Py_ssize_t c = 0; c < n; c++) h = fnv(h, j[i + c]);
            failed = group_add(&acc, h) < 0;
        }
    }
    *chars = acc;
    return failed ? -1 : 0;
}

/* Drop scratch a very large text grew (a 500 KB prompt scored whole must not pin ~10 MB). */
static void scorer_trim(Scorer *self) {
    ngc_scratch_trim(&self->text);
    if (self->seen_cap > (1 << 16)) {
        PyMem_Free(self->seen);
        self->seen = NULL;
        self->seen_cap = 0;
    }
    if (self->joined_cap > (1 << 18)) {
        PyMem_Free(self->joined);
        PyMem_Free(self->tokens.items);
        PyMem_Free(self->sentences.items);
        self->joined = NULL;
        self->tokens.items = self->sentences.items = NULL;
        self->joined_cap = 0;
        self->tokens.cap = self->sentences.cap = 0;
    }
    if (self->segs.cap > (1 << 14)) {
        PyMem_Free(self->segs.items);
        self->segs.items = NULL;
        self->segs.cap = 0;
    }
    if (self->terms && self->terms->cap > (1 << 18)) {
        terms_free(self->terms);
        self->terms = NULL;
    }
    if (self->span_terms && self->span_terms->cap > (1 << 18)) {
        terms_free(self->span_terms);
        self->span_terms = NULL;
    }
}

static PyObject *Scorer_logit(Scorer *self, PyObject *args, PyObject *kwargs) {
    Text t;
    if (ngc_text_from_args(args, kwargs, &self->text, &t) < 0) return NULL;
    Group g[3];
    PyObject *ids[3] = {NULL, NULL, NULL};
    int failed = extract(self, &t, g, ids) < 0;
    scorer_trim(self);
    if (failed) return NULL;
    return PyFloat_FromDouble(group_value(&g[0]) + group_value(&g[1]) + group_value(&g[2]));
}

static PyObject *Scorer_max_logit(Scorer *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "spans", NULL};
    PyObject *s, *spans;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO", keywords, &s, &spans)) return NULL;
    PyObject *seq = PySequence_Fast(spans, "spans must be a sequence of (start, end) pairs");
    if (!seq) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), n = PyUnicode_GET_LENGTH(s);
    Text whole;
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "max_logit needs at least one span");
        goto fail;
    }
    if (ngc_text_view(s, 0, n, &self->text, &whole) < 0) goto fail;
    double best = -INFINITY;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t start, end;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, k), "nn;a span is (start, end)",
                              &start, &end))
            goto fail;
        if (start < 0 || start > end || end > n) {
            PyErr_Format(PyExc_ValueError, "span [%zd, %zd) is not inside the text (length %zd)",
                         start, end, n);
            goto fail;
        }
        Text t = {whole.u, start, end};
        Group g[3];
        PyObject *ids[3] = {NULL, NULL, NULL};
        if (extract(self, &t, g, ids) < 0) goto fail;
        double z = group_value(&g[0]) + group_value(&g[1]) + group_value(&g[2]);
        if (z > best) best = z;
    }
    Py_DECREF(seq);
    scorer_trim(self);
    return PyFloat_FromDouble(best);
fail:
    Py_DECREF(seq);
    scorer_trim(self);
    return NULL;
}

/* segments.py, exactly: the whole text (up to WINDOW) or its overlapping windows, then, when
 * there is more than one, the sentences of at least MIN_SENTENCE characters: the matches of
 * `[^.!?:\n]+(?:[.!?:]+|\n+|$)` with surrounding whitespace trimmed, cut to WINDOW, except a
 * sentence that is the whole text. */
#define WINDOW 512
#define STRIDE 256
#define MIN_SENTENCE 12


static int find_segments(const Text *t, Terms *m, Spans *out, Py_ssize_t *nwindows) {
    Py_ssize_t n = t->end, r = 0;
    out->len = 0;
    if (find_terms(t, m) < 0) return -1;
    if (n <= WINDOW) {
        if (ngc_spans_push(out, 0, n) < 0) return -1;
    } else {
        for (Py_ssize_t s = 0; s < n - STRIDE; s += STRIDE)
            if (ngc_spans_push(out, s, s + WINDOW < n ? s + WINDOW : n) < 0) return -1;
    }
    Py_ssize_t windows = out->len, i = 0;
    *nwindows = windows;
    while (i < n) {
        while (m->pos[r] < i) r++;
        if (m->pos[r] == i) { /* a terminator */
            i++;
            continue;
        }
        Py_ssize_t end = m->pos[r]; /* the next terminator, or n */
        if (end < n && CH(t, end) == '\n') {
            while (end < n && CH(t, end) == '\n') end++;
        } else {
            while (end < n && is_terminator(CH(t, end)) && CH(t, end) != '\n') end++;
        }
        Py_ssize_t a = i, b = end;
        while (a < b && Py_UNICODE_ISSPACE(CH(t, a))) a++;
        while (b > a && Py_UNICODE_ISSPACE(CH(t, b - 1))) b--;
        if (b - a >= MIN_SENTENCE && ngc_spans_push(out, a, b < a + WINDOW ? b : a + WINDOW) < 0)
            return -1;
        i = end;
    }
    if (out->len - windows <= 1) {
        out->len = windows;
        return 0;
    }
    Py_ssize_t kept = windows;
    for (Py_ssize_t k = windows; k < out->len; k++) {
        Span sp = out->items[k];
        if (sp.start != 0 || sp.end != n) out->items[kept++] = sp;
    }
    out->len = kept;
    return 0;
}

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
 * range through each bucket's sorted occurrences, and de-duplicated with the usual set. Only a
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

static void seq_free(Seq *q) {
    PyMem_Free(q->bucket);
    PyMem_Free(q->w);
    PyMem_Free(q->prev);
    PyMem_Free(q->slots);
    PyMem_Free(q->next);
    PyMem_Free(q->first);
    PyMem_Free(q->at);
}

static void pool_free(Pool *p) {
    if (!p) return;
    PyMem_Free(p->tok.items);
    PyMem_Free(p->splits.items);
    PyMem_Free(p->hw);
    PyMem_Free(p->jo);
    PyMem_Free(p->joined);
    PyMem_Free(p->sj);
    PyMem_Free(p->caret);
    PyMem_Free(p->caret_id);
    PyMem_Free(p->caret_ok);
    PyMem_Free(p->before);
    seq_free(&p->words);
    seq_free(&p->chars);
    PyMem_Free(p);
}

static int seq_reserve(Seq *q, Py_ssize_t len) {
    q->len = 0;
    if (len > q->cap) {
        GROW(q->bucket, len);
        GROW(q->w, len);
        GROW(q->prev, len);
        GROW(q->next, len);
        GROW(q->first, len);
        GROW(q->at, len);
        q->cap = len;
    }
    Py_ssize_t kcap = 64;
    while (kcap < 2 * len) kcap <<= 1;
    if (kcap > q->kcap) {
        GROW(q->slots, kcap);
        q->kcap = kcap;
    }
    q->kmask = (uint32_t)(kcap - 1);
    memset(q->slots, 0, (size_t)kcap * sizeof(Slot));
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

static int pool_reserve(Pool *p, Py_ssize_t ntok, Py_ssize_t njoined) {
    if (ntok > p->tcap) {
        GROW(p->hw, ntok);
        GROW(p->jo, ntok);
        GROW(p->caret, ntok);
        GROW(p->caret_id, ntok);
        GROW(p->caret_ok, ntok);
        p->tcap = ntok;
    }
    if (njoined > p->jcap) {
        GROW(p->joined, njoined);
        GROW(p->sj, njoined);
        p->jcap = njoined;
    }
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* The id of a bucket in q's map, or -1. */
static inline int32_t seq_id(const Seq *q, uint32_t bucket) {
    uint32_t mask = q->kmask;
    for (uint32_t i = bucket & mask;; i = (i + 1) & mask) {
        if (q->slots[i].key == bucket + 1) return q->slots[i].id;
        if (!q->slots[i].key) return -1;
    }
}

/* Each feature's weight, prev[] and next[] (q->bucket[0..len) filled in). */
static void seq_index(Seq *q, const float *weights) {
    uint32_t mask = q->kmask;
    int32_t next_id = 0;
    int32_t *last = q->at; /* per id: its latest index so far */
    for (Py_ssize_t k = 0; k < q->len; k++) {
        /* The weight table and, for a long text, the map are larger than the cache: fetch
         * both for the features a little ahead, so their misses overlap. */
        if (k + 16 < q->len) {
            uint32_t ahead = q->bucket[k + 16];
            __builtin_prefetch(&weights[ahead]);
            __builtin_prefetch(&q->slots[ahead & mask], 1);
        }
        uint32_t b = q->bucket[k], i = b & mask;
        q->w[k] = weights[b];
        while (q->slots[i].key && q->slots[i].key != b + 1) i = (i + 1) & mask;
        int32_t id;
        if (!q->slots[i].key) {
            q->slots[i].key = b + 1;
            q->slots[i].id = id = next_id++;
            q->first[id] = (int32_t)k;
            q->prev[k] = -1;
        } else {
            id = q->slots[i].id;
            q->prev[k] = last[id];
            q->next[last[id]] = (int32_t)k;
        }
        q->next[k] = INT32_MAX;
        last[id] = (int32_t)k;
    }
    q->ids_used = next_id;
    memcpy(q->at, q->first, (size_t)next_id * sizeof(int32_t));
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

/* Distinct buckets of q's range [a, b): sum of their weights and their number. Four running
 * sums rather than one: a single chain of dependent additions waits ~4 cycles per feature.
 * Summing in another order can change the last bit of a sum in general; the shipped model's
 * weights lie within a few binades of each other (float32, |w| from 0.006 to 2.7), so every
 * partial sum of a span's weights is exact in a double and the order changes nothing. */
static void seq_range(const Seq *q, Py_ssize_t a, Py_ssize_t b, double *sum, Py_ssize_t *n) {
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
    Py_ssize_t count = 0, k = a;
    const int32_t *prev = q->prev;
    const float *w = q->w;
#ifdef __SSE2__
    /* Four features a step in SSE2 (every x86-64 has it): the same four running sums, lane j
     * holding t_j, each fed the same additions in the same order as the scalar loop below. A
     * feature seen before in the range adds +0.0 (its weight's bits masked off), as there. */
    __m128d s01 = _mm_setzero_pd(), s23 = _mm_setzero_pd();
    __m128i fresh = _mm_setzero_si128(), av = _mm_set1_epi32((int32_t)a);
    for (; k + 4 <= b; k += 4) {
        __m128i m = _mm_cmplt_epi32(_mm_loadu_si128((const __m128i *)(prev + k)), av);
        __m128 wv = _mm_and_ps(_mm_loadu_ps(w + k), _mm_castsi128_ps(m));
        s01 = _mm_add_pd(s01, _mm_cvtps_pd(wv));
        s23 = _mm_add_pd(s23, _mm_cvtps_pd(_mm_movehl_ps(wv, wv)));
        fresh = _mm_sub_epi32(fresh, m);
    }
    double lanes[4];
    int32_t counts[4];
    _mm_storeu_pd(lanes, s01);
    _mm_storeu_pd(lanes + 2, s23);
    _mm_storeu_si128((__m128i *)counts, fresh);
    t0 = lanes[0], t1 = lanes[1], t2 = lanes[2], t3 = lanes[3];
    count = (Py_ssize_t)counts[0] + counts[1] + counts[2] + counts[3];
#else
    for (; k + 4 <= b; k += 4) {
        int f0 = prev[k] < a, f1 = prev[k + 1] < a, f2 = prev[k + 2] < a, f3 = prev[k + 3] < a;
        t0 += f0 ? (double)w[k] : 0.0;
        t1 += f1 ? (double)w[k + 1] : 0.0;
        t2 += f2 ? (double)w[k + 2] : 0.0;
        t3 += f3 ? (double)w[k + 3] : 0.0;
        count += f0 + f1 + f2 + f3;
    }
#endif
    for (; k < b; k++) {
        int one = prev[k] < a;
        t0 += one ? (double)w[k] : 0.0;
        count += one;
    }
    *sum = (t0 + t1) + (t2 + t3);
    *n = count;
}

/* One of a span's own features: counted unless the range [a, b) of q or an earlier one of the
 * span's own features (the set of g) has its bucket. */
static inline void put_extra(Group *g, Seq *q, Py_ssize_t a, Py_ssize_t b, uint64_t h) {
    Feat f = feat_of(g, h);
    if (!seq_holds_id(q, a < b ? seq_id(q, f.bucket) : -1, a, b)) group_put(g, f);
}

/* put_extra for the "^" word of pool token k. */
static inline void put_caret(Scorer *self, Group *g, Pool *p, const Text *t, Py_ssize_t k,
                             Py_ssize_t a, Py_ssize_t b) {
    if (!p->caret_ok[k]) {
        p->caret[k] = feat_of(g, hash_span(fnv(self->seed_words, '^'), t, p->tok.items[k]));
        p->caret_id[k] = seq_id(&p->words, p->caret[k].bucket);
        p->caret_ok[k] = 1;
    }
    if (!seq_holds_id(&p->words, p->caret_id[k], a, b)) group_put(g, p->caret[k]);
}

/* The whole text's features (see above). */
static int pool_build(Scorer *self, Pool *p, const Text *t, int n) {
    if (ngc_tokenize(t, &p->tok) < 0) return -1;
    const Span *tok = p->tok.items;
    Py_ssize_t ntok = p->tok.len, jlen = 1;
    for (Py_ssize_t k = 0; k < ntok; k++) jlen += tok[k].end - tok[k].start + 1;
    Py_ssize_t nwords = ntok ? 2 * ntok - 1 : 0, nchars = jlen >= n ? jlen - n + 1 : 0;
    if (pool_reserve(p, ntok + 1, jlen + 1) < 0 || seq_reserve(&p->words, nwords + 1) < 0 ||
        seq_reserve(&p->chars, nchars + 1) < 0)
        return -1;
    uint32_t mask = self->mask;
    uint32_t *w = p->words.bucket, *ch = p->chars.bucket;
    Py_UCS4 *j = p->joined;
    Py_ssize_t len = 0;
    j[len++] = ' ';
    /* One pass over each token's characters: its unigram, its bigram with the token before
     * (hashed on from that one's state and a space) and its copy into the joined text. Three
     * loops over the same characters each mispredicted their exit once per token. */
    uint64_t before = 0;
    for (Py_ssize_t k = 0; k < ntok; k++) {
        uint64_t uni = self->seed_words, bi = fnv(before, ' ');
        if (k) j[len++] = ' ';
        p->jo[k] = len;
        for (Py_ssize_t i = tok[k].start; i < tok[k].end; i++) {
            Py_UCS4 c = CH(t, i);
            uni = fnv(uni, c);
            bi = fnv(bi, c);
            j[len++] = c;
        }
        p->hw[k] = before = uni;
        w[2 * k] = bucket_of(mask, uni);
        if (k) w[2 * k - 1] = bucket_of(mask, bi);
    }
    j[len++] = ' ';
    if (n == 4) { /* the shipped model's size: a fixed inner loop the compiler unrolls */
        for (Py_ssize_t i = 0; i < nchars; i++)
            ch[i] = bucket_of(
                mask, fnv(fnv(fnv(fnv(self->seed_chars, j[i]), j[i + 1]), j[i + 2]), j[i + 3]));
    } else {
        for (Py_ssize_t i = 0; i < nchars; i++) {
            uint64_t h = self->seed_chars;
            for (Py_ssize_t c = 0; c < n; c++) h = fnv(h, j[i + c]);
            ch[i] = bucket_of(mask, h);
        }
    }
    const float *weights = (const float *)self->weights.buf;

    /* before[]: a 1 after each token start, then running sums (no branch per character) */
    if (t->end + 1 > p->bcap) {
        GROW(p->before, t->end + 1);
        p->bcap = t->end + 1;
    }
    int32_t *starts = p->before;
    memset(starts, 0, (size_t)(t->end + 1) * sizeof(int32_t));
    for (Py_ssize_t k = 0; k < ntok; k++) starts[tok[k].start + 1] = 1;
    for (Py_ssize_t x = 1; x <= t->end; x++) starts[x] += starts[x - 1];

    p->words.len = nwords;
    p->chars.len = nchars;
    seq_index(&p->words, weights);
    seq_index(&p->chars, weights);
    p->splits_ready = 0;
    p->text_end = t->end;
    memset(p->caret_ok, 0, (size_t)ntok);
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* First token of the pool starting at or after `at` (0 <= at <= the text's length). */
static inline Py_ssize_t first_token_from(const Pool *p, Py_ssize_t at) { return p->before[at]; }

static inline double mean_like(double sum, Py_ssize_t n) { return n ? sum / sqrt((double)n) : 0.0; }

/* The logit of span t from the pool; 1 when the span has no whole token (the caller then
 * extracts it from scratch), 0 on success, -1 on error. */
static int pool_span(Scorer *self, Pool *p, const Text *t, int n, int sentence, double *z) {
    const Span *tok = p->tok.items;
    Py_ssize_t s = t->start, e = t->end;
    Py_ssize_t i = first_token_from(p, s), j = first_token_from(p, e);
    Span left = {0, 0}, right = {0, 0}; /* pieces of the tokens the span cuts, if it cuts one */
    int has_left = i > 0 && tok[i - 1].end > s, has_right = j > i && tok[j - 1].end > e;
    if (has_left) left = (Span){s, tok[i - 1].end < e ? tok[i - 1].end : e};
    Py_ssize_t fe = has_right ? j - 1 : j; /* whole tokens: [i, fe) */
    if (has_right) right = (Span){tok[j - 1].start, e};
    if (fe <= i) return 1;

    /* A sentence span is one piece as it stands (trimmed, no terminator inside but its last
     * characters), so only windows need splitting. */
    self->sentences.len = 0;
    if (!sentence && !p->splits_ready) {
        Text whole = {t->u, 0, p->text_end};
        if (find_splits(&whole, self->terms, &p->splits) < 0) return -1;
        p->splits_ready = 1;
    }
    if (sentence ? ngc_spans_push(&self->sentences, s, e) < 0
                 : pieces_from_splits(&p->splits, t, &self->sentences) < 0)
        return -1;
    const Spans *pieces = &self->sentences;
    Py_ssize_t whole = fe - i, count = whole + has_left + has_right;
    /* the span's tokens in order: left?, tok[i..fe), right? */
#define SPAN_TOKEN(k) \
    ((has_left && (k) == 0) ? left : ((k) - has_left < whole ? tok[i + (k) - has_left] : right))
    /* The index among those of the first one starting at or after `at` (s <= at < e), count
     * when none: the cut left piece starts at s, and the cut right token is pool token fe. */
#define SPAN_FIRST(at)                                                                      \
    ((has_left && (at) <= s)                                                                \
         ? 0                                                                                \
         : (first_token_from(p, (at)) < fe                                                  \
                ? has_left + first_token_from(p, (at)) - i                                  \
                : (has_right && first_token_from(p, (at)) == fe ? count - 1 : count)))
    double sum;
    Py_ssize_t cnt;
    Group g;

    /* words: the range [2i, 2fe - 1) plus the cut pieces' features and each piece's "^" word */
    Py_ssize_t wa = 2 * i, wb = 2 * fe - 1;
    if (group_open(self, &g, NULL, 4 + pieces->len) < 0) return -1;
    if (has_left) {
        uint64_t h = hash_span(self->seed_words, t, left);
        put_extra(&g, &p->words, wa, wb, h);
        put_extra(&g, &p->words, wa, wb, hash_span(fnv(h, ' '), t, tok[i]));
    }
    if (has_right) {
        put_extra(&g, &p->words, wa, wb, hash_span(fnv(p->hw[fe - 1], ' '), t, right));
        put_extra(&g, &p->words, wa, wb, hash_span(self->seed_words, t, right));
    }
    uint64_t caret = fnv(self->seed_words, '^');
    for (Py_ssize_t q = 0; q < pieces->len; q++) {
        Span piece = pieces->items[q];
        Py_ssize_t k = SPAN_FIRST(piece.start);
        if (k < count && SPAN_TOKEN(k).start < piece.end) {
            if (k >= has_left && k - has_left < whole)
                put_caret(self, &g, p, t, i + k - has_left, wa, wb);
            else
                put_extra(&g, &p->words, wa, wb, hash_span(caret, t, SPAN_TOKEN(k)));
        }
    }
    seq_range(&p->words, wa, wb, &sum, &cnt);
    *z = mean_like(sum + g.sum, cnt + g.n);

    /* tail: the last piece's tokens, when there is more than one piece */
    /* Hashed here, not pooled: only windows have a tail, and their last pieces are a small
     * part of the text, so a tail sequence of the whole text (hashed and indexed) cost more
     * than it saved. The sum is the same in any order: see seq_range. */
    if (pieces->len > 1) {
        Py_ssize_t from = pieces->items[pieces->len - 1].start, f = SPAN_FIRST(from);
        /* f >= has_left: a cut first token starts the first piece, before the last one */
        Py_ssize_t first = i + f - has_left; /* pool index of the first whole tail token */
        if (group_open(self, &g, NULL, 2 * (fe - first) + 2) < 0) return -1;
        uint64_t prev = 0;
        for (Py_ssize_t k = first; k < fe; k++) { /* unigram and bigram in one loop */
            uint64_t h = self->seed_tail, bi = fnv(prev, ' ');
            for (Py_ssize_t c = tok[k].start; c < tok[k].end; c++) {
                h = fnv(h, CH(t, c));
                bi = fnv(bi, CH(t, c));
            }
            group_add(&g, h);
            if (k > first) group_add(&g, bi);
            prev = h;
        }
        if (has_right && f < count) { /* the cut last token is in the tail */
            if (first < fe) group_add(&g, hash_span(fnv(prev, ' '), t, right));
            group_add(&g, hash_span(self->seed_tail, t, right));
        }
        *z += group_value(&g);
    }

    /* chars: the span's joined text is " " + left + the whole tokens' slice of the joined text
     * + right + " "; n-grams inside the slice are the range, the others are hashed */
    Py_ssize_t m_from = p->jo[i] - 1;
    Py_ssize_t m_to = p->jo[fe - 1] + (tok[fe - 1].end - tok[fe - 1].start) + 1;
    Py_ssize_t m_at = has_left ? 1 + (left.end - left.start) : 0, len = 0;
    Py_ssize_t m_end = m_at + (m_to - m_from);
    Py_ssize_t ca = m_from, cb = m_to - n + 1 > m_from ? m_to - n + 1 : m_from;
    Py_UCS4 *sj = p->sj;
    if (has_left) {
        sj[len++] = ' ';
        for (Py_ssize_t c = left.start; c < left.end; c++) sj[len++] = CH(t, c);
    }
    memcpy(sj + len, p->joined + m_from, (size_t)(m_to - m_from) * sizeof(Py_UCS4));
    len += m_to - m_from;
    if (has_right) {
        for (Py_ssize_t c = right.start; c < right.end; c++) sj[len++] = CH(t, c);
        sj[len++] = ' ';
    }
    if (group_open(self, &g, NULL, len - (m_to - m_from) + 2 * n) < 0) return -1;
    for (Py_ssize_t q = 0; q + n <= len; q++) {
        if (q == m_at && q + n <= m_end) q = m_end - n + 1; /* skip the range */
        if (q + n > len) break;
        uint64_t h = self->seed_chars;
        for (Py_ssize_t c = 0; c < n; c++) h = fnv(h, sj[q + c]);
        put_extra(&g, &p->chars, ca, cb, h);
    }
    seq_range(&p->chars, ca, cb, &sum, &cnt);
    *z += mean_like(sum + g.sum, cnt + g.n);
#undef SPAN_TOKEN
#undef SPAN_FIRST
    return 0;
}

/* Whether [start, end) is one of the spans items[lo, hi) (sorted by start, starts distinct). */
static int has_span(const Span *items, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t start,
                    Py_ssize_t end) {
    Py_ssize_t top = hi;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (items[mid].start < start)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < top && items[lo].start == start && items[lo].end == end;
}

/* Incremental variants. A decoded variant usually differs from the text it was decoded from
 * in a few words (a leetspeak word, one base64 blob), yet scoring it in full re-read every span.
 * With `base`, the spans of the variant that are also spans of segments(base) over the same
 * characters are left out: a span's logit depends on its characters only, so theirs are the
 * base's, already in the base's maximum (a blob decoded to another length moves the spans
 * after it: those are scored).
 * The caller may drop them only when the variant's rules weigh no more than the base's (then
 * such a span cannot lift the variant above the base's logit, see injection.py). skip[k] says
 * which of self->segs to leave out; returns the summed length of the others, or -1 on error. */
static Py_ssize_t mark_unchanged(Scorer *self, const Text *t, Py_ssize_t windows, PyObject *base,
                                 char *skip) {
    Text b;
    Spans bs = {NULL, 0, 0};
    Terms bt = {NULL, 0, 0};
    Py_ssize_t bwindows = 0, rest = 0;
    if (ngc_text_view(base, 0, PyUnicode_GET_LENGTH(base), &ngc_shared_scratch, &b) < 0 ||
        find_segments(&b, &bt, &bs, &bwindows) < 0) {
        PyMem_Free(bs.items);
        PyMem_Free(bt.pos);
        ngc_scratch_trim(&ngc_shared_scratch);
        return -1;
    }
    for (Py_ssize_t k = 0; k < self->segs.len; k++) {
        Span sp = self->segs.items[k];
        /* Windows and sentences are each sorted by start: look in the same part of the base. */
        Py_ssize_t lo = k < windows ? 0 : bwindows, hi = k < windows ? bwindows : bs.len;
        size_t size = (size_t)(sp.end - sp.start) * sizeof(Py_UCS4);
        skip[k] = sp.end <= b.end && has_span(bs.items, lo, hi, sp.start, sp.end) &&
                  memcmp(t->u + sp.start, b.u + sp.start, size) == 0;
        if (!skip[k]) rest += sp.end - sp.start;
    }
    PyMem_Free(bs.items);
    PyMem_Free(bt.pos);
    ngc_scratch_trim(&ngc_shared_scratch);
    return rest;
}

static PyObject *Scorer_pooled_logit(Scorer *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "base", NULL};
    PyObject *s, *base = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|O", keywords, &s, &base)) return NULL;
    if (base != Py_None && !PyUnicode_Check(base)) {
        PyErr_SetString(PyExc_TypeError, "pooled_logit: base must be a str or None");
        return NULL;
    }
    Text whole;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &self->text, &whole) < 0) return NULL;
    double best = -INFINITY;
    Py_ssize_t windows = 0;
    char *skip = NULL;
    if (!self->terms && !(self->terms = PyMem_Calloc(1, sizeof(Terms)))) return PyErr_NoMemory();
    int failed = find_segments(&whole, self->terms, &self->segs, &windows) < 0;
    int n = self->char_sizes[0], pooled = self->n_char_sizes == 1 && !failed;
    if (!failed && base != Py_None) {
        Py_ssize_t rest = -1;
        if (!(skip = PyMem_Malloc((size_t)self->segs.len + 1)))
            PyErr_NoMemory();
        else
            rest = mark_unchanged(self, &whole, windows, base, skip);
        failed = rest < 0;
        /* Pooling pays for the whole text once; a few changed spans are cheaper on their own. */
        if (rest <= whole.end) pooled = 0;
    }
    if (pooled && !self->pool && !(self->pool = PyMem_Calloc(1, sizeof(Pool)))) {
        PyErr_NoMemory();
        failed = 1;
    }
    if (pooled && !failed) failed = pool_build(self, self->pool, &whole, n) < 0;
    for (Py_ssize_t k = 0; !failed && k < self->segs.len; k++) {
        if (skip && skip[k]) continue;
        Text t = {whole.u, self->segs.items[k].start, self->segs.items[k].end};
        double z = 0.0;
        int scratch = 1;
        if (pooled) {
            scratch = pool_span(self, self->pool, &t, n, k >= windows, &z);
            failed = scratch < 0;
        }
        if (scratch == 1) {
            Group g[3];
            PyObject *ids[3] = {NULL, NULL, NULL};
            failed = extract(self, &t, g, ids) < 0;
            z = group_value(&g[0]) + group_value(&g[1]) + group_value(&g[2]);
        }
        if (!failed && z > best) best = z;
    }
    PyMem_Free(skip);
    if (self->pool && self->pool->jcap > (1 << 18)) {
        pool_free(self->pool);
        self->pool = NULL;
    }
    scorer_trim(self);
    return failed ? NULL : PyFloat_FromDouble(best);
}

PyObject *ngc_segments(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", NULL};
    (void)module;
    PyObject *s;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U", keywords, &s)) return NULL;
    Text t;
    Spans out = {NULL, 0, 0};
    Terms terms = {NULL, 0, 0};
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    PyObject *list = NULL;
    Py_ssize_t windows;
    if (find_segments(&t, &terms, &out, &windows) == 0 && (list = PyList_New(out.len))) {
        for (Py_ssize_t k = 0; k < out.len; k++) {
            PyObject *pair = Py_BuildValue("(nn)", out.items[k].start, out.items[k].end);
            if (!pair) {
                Py_CLEAR(list);
                break;
            }
            PyList_SET_ITEM(list, k, pair);
        }
    }
    PyMem_Free(out.items);
    PyMem_Free(terms.pos);
    ngc_scratch_trim(&ngc_shared_scratch);
    return list;
}

static PyObject *Scorer_buckets(Scorer *self, PyObject *args, PyObject *kwargs) {
    Text t;
    if (ngc_text_from_args(args, kwargs, &self->text, &t) < 0) return NULL;
    PyObject *ids[3] = {PyList_New(0), PyList_New(0), PyList_New(0)};
    Group g[3];
    int failed = !ids[0] || !ids[1] || !ids[2] || extract(self, &t, g, ids) < 0;
    scorer_trim(self);
    if (failed) {
        Py_XDECREF(ids[0]);
        Py_XDECREF(ids[1]);
        Py_XDECREF(ids[2]);
        return NULL;
    }
    return Py_BuildValue("(NNN)", ids[0], ids[1], ids[2]);
}

static int Scorer_init(Scorer *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"weights", "char_sizes", "seeds", NULL};
    PyObject *weights, *sizes, *seeds;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOO", keywords, &weights, &sizes, &seeds)) {
        return -1;
    }
    if (self->weights.obj) {
        PyErr_SetString(PyExc_RuntimeError, "Scorer is already initialised");
        return -1;
    }
    if (PyObject_GetBuffer(weights, &self->weights, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    Py_ssize_t n = self->weights.len / (Py_ssize_t)sizeof(float);
    if (self->weights.itemsize != sizeof(float) || strcmp(self->weights.format, "f") != 0 ||
        n < 2 || (n & (n - 1)) != 0 || n > ((Py_ssize_t)1 << 30)) {
        PyErr_SetString(PyExc_ValueError,
                        "weights must be a float32 buffer whose length is a power of two");
        return -1;
    }
    self->mask = (uint32_t)(n - 1);
    PyObject *seq = PySequence_Fast(sizes, "char_sizes must be a sequence of ints");
    if (!seq) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > MAX_CHAR_SIZES) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d character n-gram sizes", MAX_CHAR_SIZES);
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        long size = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (size < 1 || size > 16) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "character n-gram sizes must be in 1..16");
            return -1;
        }
        self->char_sizes[i] = (int)size;
    }
    self->n_char_sizes = (int)count;
    Py_DECREF(seq);
    unsigned long long s[3];
    if (!PyArg_ParseTuple(seeds, "KKK;seeds must be three unsigned 64-bit ints", &s[0], &s[1],
                          &s[2])) {
        return -1;
    }
    self->seed_words = s[0];
    self->seed_chars = s[1];
    self->seed_tail = s[2];
    return 0;
}

static void Scorer_dealloc(Scorer *self) {
    if (self->weights.obj) PyBuffer_Release(&self->weights);
    PyMem_Free(self->seen);
    PyMem_Free(self->text.buf);
    PyMem_Free(self->tokens.items);
    PyMem_Free(self->sentences.items);
    PyMem_Free(self->segs.items);
    PyMem_Free(self->joined);
    terms_free(self->terms);
    terms_free(self->span_terms);
    pool_free(self->pool);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Scorer_methods[] = {
    {"logit", (PyCFunction)(void (*)(void))Scorer_logit, METH_VARARGS | METH_KEYWORDS,
     "logit(text, start=0, end=len(text)) -> float\n\n"
     "Sum over the word, char and tail groups of text[start:end] of (sum of the distinct\n"
     "buckets' weights) / sqrt(number of distinct buckets). No bias, no rules."},
    {"max_logit", (PyCFunction)(void (*)(void))Scorer_max_logit, METH_VARARGS | METH_KEYWORDS,
     "max_logit(text, spans) -> float\n\n"
     "The highest logit(text, start, end) over `spans`, a sequence of (start, end) pairs."},
    {"pooled_logit", (PyCFunction)(void (*)(void))Scorer_pooled_logit,
     METH_VARARGS | METH_KEYWORDS,
     "pooled_logit(text, base=None) -> float\n\n"
     "max_logit(text, segments(text)), the span set computed here (segments.py's definition).\n"
     "With `base`, the spans that are also spans of segments(base) over the same characters\n"
     "are left out (-inf when all are): for a variant decoded from `base`."},
    {"buckets", (PyCFunction)(void (*)(void))Scorer_buckets, METH_VARARGS | METH_KEYWORDS,
     "buckets(text, start=0, end=len(text)) -> (words, chars, tail)\n\n"
     "The distinct bucket ids of each group, in first-seen order (training and tests)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ngc_ScorerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "packgate_sidecar.detect._ngramcore.Scorer",
    .tp_basicsize = sizeof(Scorer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Scorer(weights, char_sizes, seeds): hashed n-gram features over a float32 table.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Scorer_init,
    .tp_dealloc = (destructor)Scorer_dealloc,
    .tp_methods = Scorer_methods,
};

