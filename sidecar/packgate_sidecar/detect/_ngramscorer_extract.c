/* _ngramscorer_extract.c: the Scorer's features of one span from scratch: its word unigrams
 * and bigrams, its sentences' first words, its last sentence's words (the tail) and the
 * character n-grams of its joined tokens, each hashed into its group's distinct buckets.
 * `logit`, `max_logit` and `buckets` read spans this way, and pooled_logit a span the pool
 * cannot serve (see _ngramscorer_pool.c). Part of the Scorer (see _ngramscorer.c). */

#include "_ngramscorer.h"

/* Start a group of at most `expected` features. Distinct buckets are found with a set sized
 * for this group (at most half full, a few KB for a 1 KB text, so it stays in L1 cache)
 * rather than a stamp array as large as the table, which costs a cache miss per feature. */
int ngscorer_group_open(Scorer *self, Group *g, PyObject *ids, Py_ssize_t expected) {
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

int ngscorer_append_id(PyObject *ids, uint32_t b) {
    PyObject *id = PyLong_FromUnsignedLong(b);
    if (!id || PyList_Append(ids, id) < 0) {
        Py_XDECREF(id);
        return -1;
    }
    Py_DECREF(id);
    return 0;
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
int ngscorer_extract(Scorer *self, const Text *t, Group groups[3], PyObject *ids[3]) {
    if (!self->span_terms && !(self->span_terms = PyMem_Calloc(1, sizeof(Terms)))) {
        PyErr_NoMemory();
        return -1;
    }
    if (ngc_tokenize(t, &self->tokens) < 0 ||
        ngscorer_split_sentences(t, self->span_terms, &self->sentences) < 0)
        return -1;
    const Span *tok = self->tokens.items;
    Py_ssize_t ntok = self->tokens.len;
    Py_ssize_t joined_len = 1;
    for (Py_ssize_t k = 0; k < ntok; k++) joined_len += tok[k].end - tok[k].start + 1;
    if (reserve_joined(self, joined_len + 1) < 0) return -1;

    /* words: unigrams, bigrams over the whole text, and "^" + each sentence's first word */
    Group *words = &groups[0];
    if (ngscorer_group_open(self, words, ids[0], 2 * ntok + self->sentences.len) < 0) return -1;
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
    if (ngscorer_group_open(self, tail, ids[2], 2 * (ntok - first)) < 0 ||
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
    if (ngscorer_group_open(self, chars, ids[1], self->n_char_sizes * len) < 0) return -1;
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
