/* _textscan_charclasses.c: CharClasses, which of up to eight character classes a text contains,
 * in one pass. The normaliser asks this of every non-ASCII prompt (invisible characters?
 * combining marks? Cyrillic look-alikes?); a regex character-class scan per question cost 3-20 us
 * per KB. The object's layout and class lookup are in _textscan.h: Translator.apply_words reads
 * them too. One of the text scanners of the compiled core (see _ngramcore.c). */

#include "_textscan.h"

static int CharClasses_init(CharClasses *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"classes", NULL};
    PyObject *classes;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", keywords, &classes)) return -1;
    if (self->bmp) {
        PyErr_SetString(PyExc_RuntimeError, "CharClasses is already initialised");
        return -1;
    }
    PyObject *seq = PySequence_Fast(classes, "classes must be a sequence of range lists");
    if (!seq) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > 8) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "at most 8 character classes");
        return -1;
    }
    self->bmp = PyMem_Calloc(0x10000, 1);
    if (!self->bmp) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *ranges = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, k),
                                           "a class is a sequence of (low, high) code points");
        if (!ranges) goto fail;
        for (Py_ssize_t r = 0; r < PySequence_Fast_GET_SIZE(ranges); r++) {
            unsigned int lo, hi;
            if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(ranges, r), "II;a range is (low, high)",
                                  &lo, &hi) ||
                lo > hi || hi > 0x10FFFF) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad code point range");
                Py_DECREF(ranges);
                goto fail;
            }
            uint8_t bit = (uint8_t)(1u << k);
            for (unsigned int c = lo; c <= hi && c < 0x10000; c++) self->bmp[c] |= bit;
            if (hi >= 0x10000) {
                Range *grown = PyMem_Realloc(self->astral, (size_t)(self->nastral + 1) * sizeof(Range));
                if (!grown) {
                    Py_DECREF(ranges);
                    PyErr_NoMemory();
                    goto fail;
                }
                self->astral = grown;
                self->astral[self->nastral++] = (Range){lo < 0x10000 ? 0x10000 : lo, hi, bit};
            }
        }
        Py_DECREF(ranges);
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* The union of the classes of the text's characters (stops early once every class is seen). */
static PyObject *CharClasses_which(CharClasses *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", NULL};
    PyObject *s;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U", keywords, &s)) return NULL;
    if (!self->bmp) return PyLong_FromLong(0);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    unsigned int mask = 0;
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = data;
        for (Py_ssize_t i = 0; i < n; i++) mask |= self->bmp[p[i]];
    } else if (kind == PyUnicode_2BYTE_KIND) {
        const Py_UCS2 *p = data;
        for (Py_ssize_t i = 0; i < n; i++) mask |= self->bmp[p[i]];
    } else {
        const Py_UCS4 *p = data;
        for (Py_ssize_t i = 0; i < n && mask != 0xff; i++) mask |= textscan_class_of(self, p[i]);
    }
    return PyLong_FromUnsignedLong(mask);
}

/* (start, end) of each \w+ token holding characters of every class in `need`. */
static PyObject *CharClasses_tokens(CharClasses *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "need", NULL};
    PyObject *s;
    unsigned int need;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UI", keywords, &s, &need)) return NULL;
    Text t;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    PyObject *out = PyList_New(0);
    Py_ssize_t i = 0;
    while (out && self->bmp && i < t.end) {
        if (!is_word(CH(&t, i))) {
            i++;
            continue;
        }
        unsigned int mask = 0;
        Py_ssize_t j = i;
        while (j < t.end && is_word(CH(&t, j))) mask |= textscan_class_of(self, CH(&t, j++));
        if ((mask & need) == need) {
            PyObject *span = Py_BuildValue("(nn)", i, j);
            if (!span || PyList_Append(out, span) < 0) Py_CLEAR(out);
            Py_XDECREF(span);
        }
        i = j;
    }
    ngc_scratch_trim(&ngc_shared_scratch);
    return out;
}

/* The stretches of the text holding characters of a class in `need`: each maximal run of them
 * with the one character before it, runs less than `gap` characters apart merged into one. */
/* CharClasses.runs over data of a constant kind (see class_tokens in _textscan_translator.c). */
__attribute__((always_inline)) static inline int class_runs(const CharClasses *cc,
                                                            const void *data, int kind,
                                                            Py_ssize_t n, unsigned int need,
                                                            Py_ssize_t gap, PyObject *out) {
    Py_ssize_t start = -1, end = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(textscan_class_of(cc, PyUnicode_READ(kind, data, i)) & need)) continue;
        Py_ssize_t j = i + 1;
        while (j < n && textscan_class_of(cc, PyUnicode_READ(kind, data, j)) & need) j++;
        Py_ssize_t from = i > 0 ? i - 1 : 0;
        if (start >= 0 && from - end >= gap) {
            if (textscan_push_span(out, start, end) < 0) return -1;
            start = -1;
        }
        if (start < 0) start = from;
        end = j;
        i = j;
    }
    return start >= 0 ? textscan_push_span(out, start, end) : 0;
}

static PyObject *CharClasses_runs(CharClasses *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "need", "gap", NULL};
    PyObject *s;
    unsigned int need;
    Py_ssize_t gap;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UIn", keywords, &s, &need, &gap)) return NULL;
    PyObject *out = PyList_New(0);
    if (!out || !self->bmp) return out;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    const void *data = PyUnicode_DATA(s);
    int failed;
    if (PyUnicode_KIND(s) == PyUnicode_1BYTE_KIND)
        failed = class_runs(self, data, PyUnicode_1BYTE_KIND, n, need, gap, out);
    else if (PyUnicode_KIND(s) == PyUnicode_2BYTE_KIND)
        failed = class_runs(self, data, PyUnicode_2BYTE_KIND, n, need, gap, out);
    else
        failed = class_runs(self, data, PyUnicode_4BYTE_KIND, n, need, gap, out);
    if (failed) Py_CLEAR(out);
    return out;
}

static void CharClasses_dealloc(CharClasses *self) {
    PyMem_Free(self->bmp);
    PyMem_Free(self->astral);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The text without each maximal run of characters of a class in `run` that directly follows a
 * character of a class in `after` (the normaliser drops the combining marks on Latin letters:
 * a regex with a look-behind cost ~20 us per stretch of Zalgo text). */
static PyObject *CharClasses_drop_runs(CharClasses *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "run", "after", NULL};
    PyObject *s;
    unsigned int run, after;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UII", keywords, &s, &run, &after)) return NULL;
    if (!self->bmp) return Py_NewRef(s);
    Text t;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    Py_UCS4 *out = PyMem_Malloc((size_t)(t.end ? t.end : 1) * sizeof(Py_UCS4));
    if (!out) {
        ngc_scratch_trim(&ngc_shared_scratch);
        return PyErr_NoMemory();
    }
    Py_ssize_t len = 0;
    unsigned int before = 0; /* the previous character's classes */
    int dropping = 0;
    for (Py_ssize_t i = 0; i < t.end; i++) {
        Py_UCS4 c = CH(&t, i);
        unsigned int k = textscan_class_of(self, c);
        if (k & run) {
            if (!(before & run)) dropping = (before & after) != 0; /* a run starts here */
        } else {
            dropping = 0;
        }
        if (!dropping) out[len++] = c;
        before = k;
    }
    PyObject *result =
        len == t.end ? Py_NewRef(s) : PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, len);
    PyMem_Free(out);
    ngc_scratch_trim(&ngc_shared_scratch);
    return result;
}

/* Whether a character of a class in `run` directly follows one of a class in `after`: the
 * normaliser's question "is a combining mark on a Latin letter?", which a regex look-behind
 * answered at ~5 ns a character. Stops at the first. */
__attribute__((always_inline)) static inline int class_follows(const CharClasses *cc,
                                                               const void *data, int kind,
                                                               Py_ssize_t n, unsigned int run,
                                                               unsigned int after) {
    unsigned int before = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned int k = textscan_class_of(cc, PyUnicode_READ(kind, data, i));
        if ((k & run) && (before & after)) return 1;
        before = k;
    }
    return 0;
}

static PyObject *CharClasses_follows(CharClasses *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "run", "after", NULL};
    PyObject *s;
    unsigned int run, after;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UII", keywords, &s, &run, &after)) return NULL;
    if (!self->bmp) Py_RETURN_FALSE;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    const void *data = PyUnicode_DATA(s);
    int found;
    if (PyUnicode_KIND(s) == PyUnicode_1BYTE_KIND)
        found = class_follows(self, data, PyUnicode_1BYTE_KIND, n, run, after);
    else if (PyUnicode_KIND(s) == PyUnicode_2BYTE_KIND)
        found = class_follows(self, data, PyUnicode_2BYTE_KIND, n, run, after);
    else
        found = class_follows(self, data, PyUnicode_4BYTE_KIND, n, run, after);
    return PyBool_FromLong(found);
}

static PyMethodDef CharClasses_methods[] = {
    {"follows", (PyCFunction)(void (*)(void))CharClasses_follows, METH_VARARGS | METH_KEYWORDS,
     "follows(text, run, after) -> bool: whether a character of a class in `run` directly\n"
     "follows a character of a class in `after`."},
    {"drop_runs", (PyCFunction)(void (*)(void))CharClasses_drop_runs, METH_VARARGS | METH_KEYWORDS,
     "drop_runs(text, run, after) -> str: the text without each maximal run of characters of a\n"
     "class in `run` that directly follows a character of a class in `after`."},
    {"which", (PyCFunction)(void (*)(void))CharClasses_which, METH_VARARGS | METH_KEYWORDS,
     "which(text) -> int: bit k set when the text has a character of class k."},
    {"tokens", (PyCFunction)(void (*)(void))CharClasses_tokens, METH_VARARGS | METH_KEYWORDS,
     "tokens(text, need) -> list[(start, end)]: the \\w+ tokens with a character of every class\n"
     "whose bit is set in `need` (one character may count for several classes)."},
    {"runs", (PyCFunction)(void (*)(void))CharClasses_runs, METH_VARARGS | METH_KEYWORDS,
     "runs(text, need, gap) -> list[(start, end)]: each maximal run of characters of a class\n"
     "in `need`, with the character before it; runs less than `gap` characters apart merged."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ngc_CharClassesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "packgate_sidecar.detect._ngramcore.CharClasses",
    .tp_basicsize = sizeof(CharClasses),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "CharClasses(classes): up to 8 classes, each a list of inclusive code point ranges.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)CharClasses_init,
    .tp_dealloc = (destructor)CharClasses_dealloc,
    .tp_methods = CharClasses_methods,
};
