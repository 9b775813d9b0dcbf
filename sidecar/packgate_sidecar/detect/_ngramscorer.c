/* _ngramscorer.c: the hashed n-gram scorer of the prompt-injection model (see _ngramcore.c):
 * the Scorer type, its weight table and scratch, and its methods. Their work lives beside it:
 * _ngramscorer_extract.c (a span's features from scratch), _ngramscorer_pool.c (pooled_logit),
 * _ngramscorer_seq.c (the pool's feature sequences) and _ngramscorer_sentences.c (segments and
 * sentence pieces); _ngramscorer.h holds what they share. */

#include "_ngramscorer.h"

/* Drop scratch a very large text grew (a 500 KB prompt scored whole must not pin ~10 MB). */
void ngscorer_trim(Scorer *self) {
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
        ngscorer_terms_free(self->terms);
        self->terms = NULL;
    }
    if (self->span_terms && self->span_terms->cap > (1 << 18)) {
        ngscorer_terms_free(self->span_terms);
        self->span_terms = NULL;
    }
}

static PyObject *Scorer_logit(Scorer *self, PyObject *args, PyObject *kwargs) {
    Text t;
    if (ngc_text_from_args(args, kwargs, &self->text, &t) < 0) return NULL;
    Group g[3];
    PyObject *ids[3] = {NULL, NULL, NULL};
    int failed = ngscorer_extract(self, &t, g, ids) < 0;
    ngscorer_trim(self);
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
        if (ngscorer_extract(self, &t, g, ids) < 0) goto fail;
        double z = group_value(&g[0]) + group_value(&g[1]) + group_value(&g[2]);
        if (z > best) best = z;
    }
    Py_DECREF(seq);
    ngscorer_trim(self);
    return PyFloat_FromDouble(best);
fail:
    Py_DECREF(seq);
    ngscorer_trim(self);
    return NULL;
}

static PyObject *Scorer_buckets(Scorer *self, PyObject *args, PyObject *kwargs) {
    Text t;
    if (ngc_text_from_args(args, kwargs, &self->text, &t) < 0) return NULL;
    PyObject *ids[3] = {PyList_New(0), PyList_New(0), PyList_New(0)};
    Group g[3];
    int failed = !ids[0] || !ids[1] || !ids[2] || ngscorer_extract(self, &t, g, ids) < 0;
    ngscorer_trim(self);
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
    ngscorer_terms_free(self->terms);
    ngscorer_terms_free(self->span_terms);
    ngscorer_pool_free(self->pool);
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
    {"pooled_logit", (PyCFunction)(void (*)(void))ngscorer_pooled_logit,
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
