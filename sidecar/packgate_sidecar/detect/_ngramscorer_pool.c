/* _ngramscorer_pool.c: pooled_logit, a variant's logit as the maximum over its segments,
 * with the work shared across them: the whole text's features are computed once (the pool,
 * see the pooling note in _ngramscorer.h) and each span sums its ranges of them plus its few
 * own features; with `base`, the spans a decoded variant shares with the text it came from
 * are left out. Part of the Scorer (see _ngramscorer.c). */

#include "_ngramscorer.h"

void ngscorer_pool_free(Pool *p) {
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
    ngscorer_seq_free(&p->words);
    ngscorer_seq_free(&p->chars);
    PyMem_Free(p);
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
    if (pool_reserve(p, ntok + 1, jlen + 1) < 0 ||
        ngscorer_seq_reserve(&p->words, nwords + 1) < 0 ||
        ngscorer_seq_reserve(&p->chars, nchars + 1) < 0)
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
    ngscorer_seq_index(&p->words, weights);
    ngscorer_seq_index(&p->chars, weights);
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
        if (ngscorer_find_splits(&whole, self->terms, &p->splits) < 0) return -1;
        p->splits_ready = 1;
    }
    if (sentence ? ngc_spans_push(&self->sentences, s, e) < 0
                 : ngscorer_pieces_from_splits(&p->splits, t, &self->sentences) < 0)
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
    if (ngscorer_group_open(self, &g, NULL, 4 + pieces->len) < 0) return -1;
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
    ngscorer_seq_range(&p->words, wa, wb, &sum, &cnt);
    *z = mean_like(sum + g.sum, cnt + g.n);

    /* tail: the last piece's tokens, when there is more than one piece */
    /* Hashed here, not pooled: only windows have a tail, and their last pieces are a small
     * part of the text, so a tail sequence of the whole text (hashed and indexed) cost more
     * than it saved. The sum is the same in any order: see seq_range. */
    if (pieces->len > 1) {
        Py_ssize_t from = pieces->items[pieces->len - 1].start, f = SPAN_FIRST(from);
        /* f >= has_left: a cut first token starts the first piece, before the last one */
        Py_ssize_t first = i + f - has_left; /* pool index of the first whole tail token */
        if (ngscorer_group_open(self, &g, NULL, 2 * (fe - first) + 2) < 0) return -1;
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
    if (ngscorer_group_open(self, &g, NULL, len - (m_to - m_from) + 2 * n) < 0) return -1;
    for (Py_ssize_t q = 0; q + n <= len; q++) {
        if (q == m_at && q + n <= m_end) q = m_end - n + 1; /* skip the range */
        if (q + n > len) break;
        uint64_t h = self->seed_chars;
        for (Py_ssize_t c = 0; c < n; c++) h = fnv(h, sj[q + c]);
        put_extra(&g, &p->chars, ca, cb, h);
    }
    ngscorer_seq_range(&p->chars, ca, cb, &sum, &cnt);
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
        ngscorer_find_segments(&b, &bt, &bs, &bwindows) < 0) {
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

PyObject *ngscorer_pooled_logit(Scorer *self, PyObject *args, PyObject *kwargs) {
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
    int failed = ngscorer_find_segments(&whole, self->terms, &self->segs, &windows) < 0;
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
            failed = ngscorer_extract(self, &t, g, ids) < 0;
            z = group_value(&g[0]) + group_value(&g[1]) + group_value(&g[2]);
        }
        if (!failed && z > best) best = z;
    }
    PyMem_Free(skip);
    if (self->pool && self->pool->jcap > (1 << 18)) {
        ngscorer_pool_free(self->pool);
        self->pool = NULL;
    }
    ngscorer_trim(self);
    return failed ? NULL : PyFloat_FromDouble(best);
}
