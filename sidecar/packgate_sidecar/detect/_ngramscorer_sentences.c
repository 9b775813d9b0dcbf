/* _ngramscorer_sentences.c: the spans the Scorer reads, exactly as segments.py and
 * split_sentences define them: a text's windows and sentences (`segments`, the spans
 * pooled_logit scores) and a span's sentence pieces (its "^" words and tail group), all found
 * from one branch-free pass over the text's terminators. Part of the Scorer (see
 * _ngramscorer.c, _ngramscorer.h). */

#include "_ngramscorer.h"

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

void ngscorer_terms_free(Terms *m) {
    if (m) PyMem_Free(m->pos);
    PyMem_Free(m);
}

/* split_sentences' split points over t: (where a piece ends, where the next begins). `m`
 * holds the terminators of t, or of a text t starts and ends inside. */
int ngscorer_find_splits(const Text *t, const Terms *m, Spans *out) {
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
int ngscorer_split_sentences(const Text *t, Terms *m, Spans *out) {
    if (find_terms(t, m) < 0 || ngscorer_find_splits(t, m, out) < 0) return -1;
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
int ngscorer_pieces_from_splits(const Spans *splits, const Text *t, Spans *out) {
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

/* segments.py, exactly: the whole text (up to WINDOW) or its overlapping windows, then, when
 * there is more than one, the sentences of at least MIN_SENTENCE characters: the matches of
 * `[^.!?:\n]+(?:[.!?:]+|\n+|$)` with surrounding whitespace trimmed, cut to WINDOW, except a
 * sentence that is the whole text. */
#define WINDOW 512
#define STRIDE 256
#define MIN_SENTENCE 12


int ngscorer_find_segments(const Text *t, Terms *m, Spans *out, Py_ssize_t *nwindows) {
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
    if (ngscorer_find_segments(&t, &terms, &out, &windows) == 0 && (list = PyList_New(out.len))) {
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
