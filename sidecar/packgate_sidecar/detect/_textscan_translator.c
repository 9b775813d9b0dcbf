/* _textscan_translator.c: Translator, str.translate for tables that map characters to at most
 * one character. The normaliser deletes invisible characters and folds look-alikes in every
 * obfuscated prompt; str.translate with a dict costs ~50-100 ns per character, this a few.
 * `apply_words` folds only the tokens a CharClasses picks (see _textscan_charclasses.c), in the
 * same call. One of the text scanners of the compiled core (see _ngramcore.c, _textscan.h). */

#include "_textscan.h"

typedef struct {
    Py_UCS4 key;
    Py_UCS4 value; /* the replacement, or DELETE */
} Mapping;

#define DELETE 0xFFFFFFFFu

typedef struct {
    PyObject_HEAD
    uint8_t filter[0x10000 / 8]; /* bit c set: c (BMP) is a key */
    int astral;                   /* some key lies above the BMP: such characters are looked up */
    Mapping *slots; /* open addressing on the key; key 0 marks an empty slot (0 is never a key) */
    uint32_t mask;
} Translator;

static inline uint32_t key_hash(Py_UCS4 c) { return (uint32_t)(fmix64(c) & 0xffffffffu); }

static inline const Mapping *translator_find(const Translator *self, Py_UCS4 c) {
    /* The filter is exact for the BMP: a key above it (a tag character mirrors ASCII in its
     * low bits) must not send every ASCII character to the table. */
    if (c < 0x10000 ? !(self->filter[c >> 3] >> (c & 7) & 1) : !self->astral) return NULL;
    for (uint32_t i = key_hash(c) & self->mask;; i = (i + 1) & self->mask) {
        if (self->slots[i].key == c) return &self->slots[i];
        if (!self->slots[i].key) return NULL;
    }
}

static int Translator_init(Translator *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"table", NULL};
    PyObject *table;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!", keywords, &PyDict_Type, &table)) return -1;
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Translator is already initialised");
        return -1;
    }
    uint32_t cap = 8;
    while (cap < 2 * (uint32_t)PyDict_GET_SIZE(table)) cap <<= 1;
    self->slots = PyMem_Calloc(cap, sizeof(Mapping));
    if (!self->slots) {
        PyErr_NoMemory();
        return -1;
    }
    self->mask = cap - 1;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(table, &pos, &key, &value)) {
        long c = PyLong_Check(key) ? PyLong_AsLong(key) : -1;
        int ok = c > 0 && c <= 0x10FFFF &&
                 (value == Py_None || (PyUnicode_Check(value) && PyUnicode_GET_LENGTH(value) == 1));
        if (!ok) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError,
                             "a translation maps a code point > 0 to one character or None, "
                             "got %R: %R", key, value);
            return -1;
        }
        Py_UCS4 to = value == Py_None ? DELETE : PyUnicode_READ_CHAR(value, 0);
        uint32_t i = key_hash((Py_UCS4)c) & self->mask;
        while (self->slots[i].key && self->slots[i].key != (Py_UCS4)c) i = (i + 1) & self->mask;
        self->slots[i] = (Mapping){(Py_UCS4)c, to};
        if (c < 0x10000)
            self->filter[c >> 3] |= (uint8_t)(1u << (c & 7));
        else
            self->astral = 1;
    }
    return 0;
}

/* The spans argument of apply as an array: sorted, disjoint (start, end) pairs inside [0, n]. */
static int translator_spans(PyObject *spans, Py_ssize_t n, Spans *out) {
    PyObject *seq = PySequence_Fast(spans, "spans must be a sequence of (start, end) pairs");
    if (!seq) return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq), last = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t start, end;
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2 &&
            PyLong_CheckExact(PyTuple_GET_ITEM(item, 0)) &&
            PyLong_CheckExact(PyTuple_GET_ITEM(item, 1))) {
            /* the usual (int, int): read directly (ParseTuple parses its format per span) */
            start = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 0));
            end = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 1));
            if ((start == -1 || end == -1) && PyErr_Occurred()) goto fail;
        } else if (!PyArg_ParseTuple(item, "nn;a span is (start, end)", &start, &end)) {
            goto fail;
        }
        if (start < last || start > end || end > n) {
            PyErr_Format(PyExc_ValueError,
                         "spans must be sorted, disjoint and inside the text (length %zd), got "
                         "[%zd, %zd)", n, start, end);
            goto fail;
        }
        if (ngc_spans_push(out, start, end) < 0) goto fail;
        last = end;
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* The mapping of character i, if it has one and lies inside a span (*k walks the spans). */
static inline const Mapping *translator_at(const Translator *self, Py_UCS4 c, Py_ssize_t i,
                                           const Spans *sp, Py_ssize_t *k) {
    if (sp) {
        while (*k < sp->len && sp->items[*k].end <= i) ++*k;
        if (*k == sp->len || sp->items[*k].start > i) return NULL;
    }
    return translator_find(self, c);
}

/* text.translate(table), for the table given at construction, applied only inside `spans`
 * when given (the homoglyph fold of mixed-script words); the text itself when unchanged. */
static PyObject *translator_run(Translator *self, PyObject *s, const Spans *sp);

static PyObject *Translator_apply(Translator *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "spans", NULL};
    PyObject *s, *spans = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|O", keywords, &s, &spans)) return NULL;
    if (!self->slots) return Py_NewRef(s);
    Spans storage = {NULL, 0, 0};
    if (spans != Py_None && translator_spans(spans, PyUnicode_GET_LENGTH(s), &storage) < 0) {
        PyMem_Free(storage.items);
        return NULL;
    }
    PyObject *out = translator_run(self, s, spans != Py_None ? &storage : NULL);
    PyMem_Free(storage.items);
    return out;
}

/* The translation of s, only inside the spans sp when not NULL (the text itself if unchanged). */
/* Pass one of translator_run: the output's length and largest character; 1 if any character
 * maps. Inlined with a constant kind, so each kind gets its own loop without a switch per
 * character (the same for pass two). */
__attribute__((always_inline)) static inline int translator_measure(
    const Translator *self, const void *data, int kind, Py_ssize_t n, const Spans *sp,
    Py_ssize_t *out_len, Py_UCS4 *maxchar) {
    Py_ssize_t k = 0, len = 0;
    Py_UCS4 top = 0;
    int changed = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        const Mapping *m = translator_at(self, c, i, sp, &k);
        if (m) {
            changed = 1;
            c = m->value;
            if (c == DELETE) continue;
        }
        if (c > top) top = c;
        len++;
    }
    *out_len = len;
    *maxchar = top;
    return changed;
}

__attribute__((always_inline)) static inline void translator_write(
    const Translator *self, const void *data, int kind, Py_ssize_t n, const Spans *sp,
    PyObject *out) {
    int out_kind = PyUnicode_KIND(out);
    void *out_data = PyUnicode_DATA(out);
    Py_ssize_t w = 0, k = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        const Mapping *m = translator_at(self, c, i, sp, &k);
        if (m) {
            c = m->value;
            if (c == DELETE) continue;
        }
        PyUnicode_WRITE(out_kind, out_data, w++, c);
    }
}

/* The largest character of data[a, b) (a str's kind), inlined with a constant kind: a loop
 * the compiler vectorises, where reading through the kind switched at every character. */
__attribute__((always_inline)) static inline Py_UCS4 max_in(const void *data, int kind,
                                                           Py_ssize_t a, Py_ssize_t b) {
    Py_UCS4 top = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        top = c > top ? c : top;
    }
    return top;
}

static Py_UCS4 max_char(PyObject *s, Py_ssize_t a, Py_ssize_t b) {
    const void *data = PyUnicode_DATA(s);
    if (PyUnicode_IS_ASCII(s)) return a < b ? 0x7F : 0; /* every result below 0x80 is ASCII */
    switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND:
        return max_in(data, PyUnicode_1BYTE_KIND, a, b);
    case PyUnicode_2BYTE_KIND:
        return max_in(data, PyUnicode_2BYTE_KIND, a, b);
    default:
        return max_in(data, PyUnicode_4BYTE_KIND, a, b);
    }
}

/* translator_run inside spans: characters outside them are copied, not looked up. */
static PyObject *translator_run_spans(Translator *self, PyObject *s, const Spans *sp) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), out_len = n;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_UCS4 maxchar = 0;
    int changed = 0;
    Py_ssize_t last = 0;
    for (Py_ssize_t k = 0; k <= sp->len; k++) {
        Py_ssize_t a = k < sp->len ? sp->items[k].start : n, b = k < sp->len ? sp->items[k].end : n;
        Py_UCS4 outside = max_char(s, last, a);
        if (outside > maxchar) maxchar = outside;
        for (Py_ssize_t i = a; i < b; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            const Mapping *m = translator_find(self, c);
            if (m) {
                changed = 1;
                c = m->value;
                if (c == DELETE) {
                    out_len--;
                    continue;
                }
            }
            if (c > maxchar) maxchar = c;
        }
        last = b;
    }
    if (!changed) return Py_NewRef(s);
    PyObject *out = PyUnicode_New(out_len, maxchar);
    if (!out) return NULL;
    int out_kind = PyUnicode_KIND(out);
    void *out_data = PyUnicode_DATA(out);
    Py_ssize_t w = 0;
    last = 0;
    for (Py_ssize_t k = 0; k <= sp->len; k++) {
        Py_ssize_t a = k < sp->len ? sp->items[k].start : n, b = k < sp->len ? sp->items[k].end : n;
        if (a > last) {
            if (PyUnicode_CopyCharacters(out, w, s, last, a - last) < 0) {
                Py_DECREF(out);
                return NULL;
            }
            w += a - last;
        }
        for (Py_ssize_t i = a; i < b; i++) {
            Py_UCS4 c = PyUnicode_READ(kind, data, i);
            const Mapping *m = translator_find(self, c);
            if (m) {
                c = m->value;
                if (c == DELETE) continue;
            }
            PyUnicode_WRITE(out_kind, out_data, w++, c);
        }
        last = b;
    }
    return out;
}

static PyObject *translator_run(Translator *self, PyObject *s, const Spans *sp) {
    if (sp) return translator_run_spans(self, s, sp);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), out_len = 0;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    Py_UCS4 maxchar = 0;
    int changed;
    if (kind == PyUnicode_1BYTE_KIND)
        changed = translator_measure(self, data, PyUnicode_1BYTE_KIND, n, sp, &out_len, &maxchar);
    else if (kind == PyUnicode_2BYTE_KIND)
        changed = translator_measure(self, data, PyUnicode_2BYTE_KIND, n, sp, &out_len, &maxchar);
    else
        changed = translator_measure(self, data, PyUnicode_4BYTE_KIND, n, sp, &out_len, &maxchar);
    if (!changed) return Py_NewRef(s);
    PyObject *out = PyUnicode_New(out_len, maxchar);
    if (!out) return NULL;
    if (kind == PyUnicode_1BYTE_KIND)
        translator_write(self, data, PyUnicode_1BYTE_KIND, n, sp, out);
    else if (kind == PyUnicode_2BYTE_KIND)
        translator_write(self, data, PyUnicode_2BYTE_KIND, n, sp, out);
    else
        translator_write(self, data, PyUnicode_4BYTE_KIND, n, sp, out);
    return out;
}

static PyObject *translate_words(PyObject *translator, PyObject *args, PyObject *kwargs);

static void Translator_dealloc(Translator *self) {
    PyMem_Free(self->slots);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Translator_methods[] = {
    {"apply", (PyCFunction)(void (*)(void))Translator_apply, METH_VARARGS | METH_KEYWORDS,
     "apply(text, spans=None) -> str: text.translate(table), only inside `spans` (sorted,\n"
     "disjoint (start, end) pairs) when given."},
    {"apply_words", (PyCFunction)(void (*)(void))translate_words,
     METH_VARARGS | METH_KEYWORDS,
     "apply_words(text, classes, need) -> str: apply(text, classes.tokens(text, need))."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject ngc_TranslatorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "packgate_sidecar.detect._ngramcore.Translator",
    .tp_basicsize = sizeof(Translator),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Translator(table): str.translate for a {code point: one character or None} dict.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Translator_init,
    .tp_dealloc = (destructor)Translator_dealloc,
    .tp_methods = Translator_methods,
};

/* Translator.apply_words: the translation of the \w+ tokens holding characters of every class
 * in `need` (of a CharClasses), in one call: apply(text, classes.tokens(text, need)), without
 * the list of spans in between. */
/* The \w+ tokens of data (a str's kind and length) holding every class of `need`, into out;
 * inlined with a constant kind, so each kind gets its own loop without a switch per character. */
__attribute__((always_inline)) static inline int class_tokens(const CharClasses *cc,
                                                              const void *data, int kind,
                                                              Py_ssize_t n, unsigned int need,
                                                              Spans *out) {
    Py_ssize_t i = 0;
    while (i < n) {
        if (!is_word(PyUnicode_READ(kind, data, i))) {
            i++;
            continue;
        }
        unsigned int mask = 0;
        Py_ssize_t j = i;
        for (Py_UCS4 c; j < n && is_word(c = PyUnicode_READ(kind, data, j)); j++)
            mask |= textscan_class_of(cc, c);
        if ((mask & need) == need && ngc_spans_push(out, i, j) < 0) return -1;
        i = j;
    }
    return 0;
}

static PyObject *translate_words(PyObject *translator, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "classes", "need", NULL};
    PyObject *s, *classes;
    unsigned int need;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO!I", keywords, &s, &ngc_CharClassesType,
                                     &classes, &need))
        return NULL;
    const CharClasses *cc = (const CharClasses *)classes;
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    const void *data = PyUnicode_DATA(s);
    Spans spans = {NULL, 0, 0};
    int failed = 0;
    if (cc->bmp) {
        switch (PyUnicode_KIND(s)) {
        case PyUnicode_1BYTE_KIND:
            failed = class_tokens(cc, data, PyUnicode_1BYTE_KIND, n, need, &spans);
            break;
        case PyUnicode_2BYTE_KIND:
            failed = class_tokens(cc, data, PyUnicode_2BYTE_KIND, n, need, &spans);
            break;
        default:
            failed = class_tokens(cc, data, PyUnicode_4BYTE_KIND, n, need, &spans);
        }
    }
    if (failed) {
        PyMem_Free(spans.items);
        return NULL;
    }
    PyObject *out = spans.len && ((Translator *)translator)->slots
                        ? translator_run((Translator *)translator, s, &spans)
                        : Py_NewRef(s);
    PyMem_Free(spans.items);
    return out;
}
