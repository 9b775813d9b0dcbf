/* _textscan.c: the text scanners of the compiled core (see _ngramcore.c): lexicon lookups,
 * translation tables, character classes and the decoders' signals. */

#include "_ngramcore.h"

/* ------------------------------------------------------------------------------------------ */
/* Lexicon: which of a fixed word list occur as tokens of a text, without building the tokens.
 * An entry ending in "*" is a prefix: it matches every token that starts with it. */

typedef struct {
    uint64_t hash;
    PyObject *word; /* the entry as given (with its "*"); NULL marks an empty slot */
    Py_ssize_t len; /* characters compared: the entry without its "*" */
    int prefix;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    uint64_t mask;
    Py_ssize_t size;
    uint64_t prefix_lengths; /* bit L set: some prefix entry has L characters (L < 64) */
    uint64_t prefix_starts;  /* bit (c & 63) set: some one-character prefix entry is c */
    /* bit (second & 63) of prefix_pairs[first & 63]: some longer prefix entry starts with
     * these two characters (a token that starts otherwise is no prefix entry's) */
    uint64_t prefix_pairs[64];
    Py_ssize_t prefix_max;   /* the longest prefix entry */
    /* Bit (second character & 63) of sig[min(length, 31)][first character & 63]: some word
     * entry could be this token. Most tokens of a text are in no lexicon, and this rules them
     * out before their characters are hashed (a token's hash is a serial chain of multiplies). */
    uint64_t sig[32][64];
} Lexicon;

/* The tokens of the text being looked up (ngc_tokenize: no branch per character), shared by the
 * Lexicon methods: every caller holds the GIL. */
static Spans lex_tokens;

static void lex_tokens_trim(void) {
    if (lex_tokens.cap > (1 << 16)) {
        PyMem_Free(lex_tokens.items);
        lex_tokens = (Spans){NULL, 0, 0};
    }
}

/* The signature bit of the token s (see sig); s is not empty. */
static inline int lexicon_maybe(const Lexicon *self, const Text *t, Span s) {
    Py_ssize_t len = s.end - s.start;
    Py_UCS4 second = len > 1 ? CH(t, s.start + 1) : 0;
    return self->sig[len < 31 ? len : 31][CH(t, s.start) & 63] >> (second & 63) & 1;
}

static inline uint64_t word_hash(const Text *t, Span s) { return fmix64(hash_span(FNV_BASIS, t, s)); }

static PyObject *lexicon_probe(const Lexicon *self, const Text *t, Span s, uint64_t h, int prefix) {
    Py_ssize_t len = s.end - s.start;
    for (uint64_t i = h & self->mask;; i = (i + 1) & self->mask) {
        const Slot *slot = &self->slots[i];
        if (!slot->word) return NULL;
        if (slot->hash != h || slot->len != len || slot->prefix != prefix) continue;
        Py_ssize_t k = 0;
        while (k < len && PyUnicode_READ_CHAR(slot->word, k) == CH(t, s.start + k)) k++;
        if (k == len) return slot->word;
    }
}

/* The exact (non-prefix) entry equal to the token s, or NULL. */
static PyObject *lexicon_lookup(const Lexicon *self, const Text *t, Span s) {
    if (!self->slots || !lexicon_maybe(self, t, s)) return NULL;
    return lexicon_probe(self, t, s, word_hash(t, s), 0);
}

static int Lexicon_init(Lexicon *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"words", NULL};
    PyObject *words;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O", keywords, &words)) return -1;
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Lexicon is already initialised");
        return -1;
    }
    PyObject *unique = PySet_New(words);
    if (!unique) return -1;
    Py_ssize_t n = PySet_GET_SIZE(unique);
    uint64_t cap = 8;
    while (cap < (uint64_t)n * 2) cap <<= 1;
    self->slots = PyMem_Calloc((size_t)cap, sizeof(Slot));
    if (!self->slots) {
        Py_DECREF(unique);
        PyErr_NoMemory();
        return -1;
    }
    self->mask = cap - 1;
    PyObject *it = PyObject_GetIter(unique), *word;
    Py_DECREF(unique);
    if (!it) return -1;
    while ((word = PyIter_Next(it))) {
        Py_ssize_t len = PyUnicode_Check(word) ? PyUnicode_GET_LENGTH(word) : 0;
        int prefix = len > 1 && PyUnicode_READ_CHAR(word, len - 1) == '*';
        len -= prefix;
        int ok = len > 0 && (!prefix || len < 64);
        for (Py_ssize_t i = 0; ok && i < len; i++) ok = is_word(PyUnicode_READ_CHAR(word, i));
        if (!ok) {
            PyErr_Format(PyExc_ValueError,
                         "lexicon entries must be single \\w+ words (or a word and *), got %R",
                         word);
            Py_DECREF(word);
            Py_DECREF(it);
            return -1;
        }
        Text t;
        if (ngc_text_view(word, 0, len, &ngc_shared_scratch, &t) < 0) {
            Py_DECREF(word);
            Py_DECREF(it);
            return -1;
        }
        Span s = {0, len};
        uint64_t h = word_hash(&t, s);
        uint64_t i = h & self->mask;
        while (self->slots[i].word) i = (i + 1) & self->mask;
        self->slots[i].hash = h;
        self->slots[i].word = word; /* takes the reference PyIter_Next returned */
        self->slots[i].len = len;
        self->slots[i].prefix = prefix;
        if (!prefix) {
            Py_UCS4 second = len > 1 ? PyUnicode_READ_CHAR(word, 1) : 0;
            self->sig[len < 31 ? len : 31][PyUnicode_READ_CHAR(word, 0) & 63] |= 1ULL
                                                                              << (second & 63);
        }
        if (prefix) {
            self->prefix_lengths |= 1ULL << len;
            Py_UCS4 first = PyUnicode_READ_CHAR(word, 0);
            if (len == 1)
                self->prefix_starts |= 1ULL << (first & 63);
            else
                self->prefix_pairs[first & 63] |= 1ULL << (PyUnicode_READ_CHAR(word, 1) & 63);
            if (len > self->prefix_max) self->prefix_max = len;
        }
        self->size++;
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}

static int append_position(PyObject *where, PyObject *entry, Py_ssize_t at) {
    PyObject *list = PyDict_GetItemWithError(where, entry);
    if (!list) {
        if (PyErr_Occurred() || !(list = PyList_New(0))) return -1;
        int failed = PyDict_SetItem(where, entry, list);
        Py_DECREF(list); /* the dict holds it */
        if (failed) return -1;
    }
    PyObject *pos = PyLong_FromSsize_t(at);
    int failed = !pos || PyList_Append(list, pos) < 0;
    Py_XDECREF(pos);
    return failed ? -1 : 0;
}

/* Where each entry occurs: every token equal to a word entry, or starting with a prefix entry,
 * adds its start offset to that entry's list. */
static PyObject *Lexicon_where(Lexicon *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", NULL};
    PyObject *text;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U", keywords, &text)) return NULL;
    Text t;
    if (ngc_text_view(text, 0, PyUnicode_GET_LENGTH(text), &ngc_shared_scratch, &t) < 0) return NULL;
    PyObject *where = PyDict_New();
    if (!where || !self->slots) return where;
    if (ngc_tokenize(&t, &lex_tokens) < 0) goto fail;
    for (Py_ssize_t k = 0; k < lex_tokens.len; k++) {
        Span s = lex_tokens.items[k];
        Py_ssize_t i = s.start, j = s.end;
        PyObject *word = lexicon_lookup(self, &t, s);
        if (word && append_position(where, word, i) < 0) goto fail;
        Py_UCS4 first = CH(&t, i);
        if ((self->prefix_starts >> (first & 63) & 1) ||
            (j - i > 1 && self->prefix_pairs[first & 63] >> (CH(&t, i + 1) & 63) & 1)) {
            uint64_t h = FNV_BASIS;
            for (Py_ssize_t k = i; k < j && k - i < self->prefix_max; k++) {
                h = fnv(h, CH(&t, k));
                Py_ssize_t len = k - i + 1;
                if (!(self->prefix_lengths >> len & 1)) continue;
                Span p = {i, k + 1};
                PyObject *entry = lexicon_probe(self, &t, p, fmix64(h), 1);
                if (entry && append_position(where, entry, i) < 0) goto fail;
            }
        }
    }
    lex_tokens_trim();
    ngc_scratch_trim(&ngc_shared_scratch);
    return where;
fail:
    Py_DECREF(where);
    lex_tokens_trim();
    return NULL;
}

static PyObject *Lexicon_found(Lexicon *self, PyObject *args, PyObject *kwargs) {
    Text t;
    if (ngc_text_from_args(args, kwargs, &ngc_shared_scratch, &t) < 0) return NULL;
    PyObject *found = PySet_New(NULL);
    if (!found) return NULL;
    if (ngc_tokenize(&t, &lex_tokens) < 0) {
        Py_DECREF(found);
        return NULL;
    }
    for (Py_ssize_t k = 0; k < lex_tokens.len; k++) {
        PyObject *word = lexicon_lookup(self, &t, lex_tokens.items[k]);
        if (word && PySet_Add(found, word) < 0) {
            Py_DECREF(found);
            lex_tokens_trim();
            return NULL;
        }
    }
    lex_tokens_trim();
    ngc_scratch_trim(&ngc_shared_scratch);
    return found;
}

static PyObject *Lexicon_count(Lexicon *self, PyObject *args, PyObject *kwargs) {
    Text t;
    if (ngc_text_from_args(args, kwargs, &ngc_shared_scratch, &t) < 0) return NULL;
    Py_ssize_t hits = 0;
    if (ngc_tokenize(&t, &lex_tokens) < 0) return NULL;
    for (Py_ssize_t k = 0; k < lex_tokens.len; k++)
        hits += lexicon_lookup(self, &t, lex_tokens.items[k]) != NULL;
    lex_tokens_trim();
    ngc_scratch_trim(&ngc_shared_scratch);
    return PyLong_FromSsize_t(hits);
}

static Py_ssize_t Lexicon_len(Lexicon *self) { return self->size; }

static void Lexicon_dealloc(Lexicon *self) {
    if (self->slots) {
        for (uint64_t i = 0; i <= self->mask; i++) Py_XDECREF(self->slots[i].word);
        PyMem_Free(self->slots);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Lexicon_methods[] = {
    {"found", (PyCFunction)(void (*)(void))Lexicon_found, METH_VARARGS | METH_KEYWORDS,
     "found(text, start=0, end=len(text)) -> set[str]: lexicon words occurring as \\w+ tokens."},
    {"where", (PyCFunction)(void (*)(void))Lexicon_where, METH_VARARGS | METH_KEYWORDS,
     "where(text) -> dict[str, list[int]]: each entry's token start offsets\n"
     "(a word entry: tokens equal to it; a prefix entry \"word*\": tokens starting with it)."},
    {"count", (PyCFunction)(void (*)(void))Lexicon_count, METH_VARARGS | METH_KEYWORDS,
     "count(text, start=0, end=len(text)) -> int: tokens that are lexicon words (with repeats)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Lexicon_as_sequence = {.sq_length = (lenfunc)Lexicon_len};

PyTypeObject ngc_LexiconType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "packgate_sidecar.detect._ngramcore.Lexicon",
    .tp_basicsize = sizeof(Lexicon),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lexicon(words): exact, case-sensitive lookups of \\w+ tokens in a word list (\"w*\": a prefix).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lexicon_init,
    .tp_dealloc = (destructor)Lexicon_dealloc,
    .tp_methods = Lexicon_methods,
    .tp_as_sequence = &Lexicon_as_sequence,
};

/* ------------------------------------------------------------------------------------------ */
/* Translator: str.translate for tables that map characters to at most one character. The    */
/* normaliser deletes invisible characters and folds look-alikes in every obfuscated prompt;   */
/* str.translate with a dict costs ~50-100 ns per character, this a few.                      */

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

/* ------------------------------------------------------------------------------------------ */
/* CharClasses: which of up to eight character classes a text contains, in one pass. The       */
/* normaliser asks this of every non-ASCII prompt (invisible characters? combining marks?       */
/* Cyrillic look-alikes?); a regex character-class scan per question cost 3-20 us per KB.       */

static int push_span(PyObject *list, Py_ssize_t start, Py_ssize_t end);

typedef struct {
    Py_UCS4 lo, hi;
    uint8_t mask;
} Range;

typedef struct {
    PyObject_HEAD
    uint8_t *bmp; /* class bits of every code point below 0x10000 */
    Range *astral; /* ranges above it, few */
    Py_ssize_t nastral;
} CharClasses;

static inline uint8_t class_of(const CharClasses *self, Py_UCS4 c) {
    if (c < 0x10000) return self->bmp[c];
    uint8_t mask = 0;
    for (Py_ssize_t k = 0; k < self->nastral; k++)
        if (c >= self->astral[k].lo && c <= self->astral[k].hi) mask |= self->astral[k].mask;
    return mask;
}

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
        for (Py_ssize_t i = 0; i < n && mask != 0xff; i++) mask |= class_of(self, p[i]);
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
        while (j < t.end && is_word(CH(&t, j))) mask |= class_of(self, CH(&t, j++));
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
/* CharClasses.runs over data of a constant kind (see class_tokens). */
__attribute__((always_inline)) static inline int class_runs(const CharClasses *cc,
                                                            const void *data, int kind,
                                                            Py_ssize_t n, unsigned int need,
                                                            Py_ssize_t gap, PyObject *out) {
    Py_ssize_t start = -1, end = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!(class_of(cc, PyUnicode_READ(kind, data, i)) & need)) continue;
        Py_ssize_t j = i + 1;
        while (j < n && class_of(cc, PyUnicode_READ(kind, data, j)) & need) j++;
        Py_ssize_t from = i > 0 ? i - 1 : 0;
        if (start >= 0 && from - end >= gap) {
            if (push_span(out, start, end) < 0) return -1;
            start = -1;
        }
        if (start < 0) start = from;
        end = j;
        i = j;
    }
    return start >= 0 ? push_span(out, start, end) : 0;
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
            mask |= class_of(cc, c);
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
        unsigned int k = class_of(self, c);
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
        unsigned int k = class_of(cc, PyUnicode_READ(kind, data, i));
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

/* ------------------------------------------------------------------------------------------ */

PyObject *ngc_count_tokens(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", "length", NULL};
    (void)module;
    PyObject *s;
    Py_ssize_t want;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Un", keywords, &s, &want)) return NULL;
    Text t;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    Py_ssize_t hits = 0, i = 0;
    while (i < t.end) {
        if (!is_word(CH(&t, i))) {
            i++;
            continue;
        }
        Py_ssize_t j = i + 1;
        while (j < t.end && is_word(CH(&t, j))) j++;
        hits += (j - i) == want;
        i = j;
    }
    ngc_scratch_trim(&ngc_shared_scratch);
    return PyLong_FromSsize_t(hits);
}

/* ------------------------------------------------------------------------------------------ */
/* Obfuscation signals: one pass that tells normalize.py which decoders can possibly apply.    */
/* Each flag is a necessary condition for the matching regex in normalize.py to match, so a    */
/* false flag safely skips that regex (Python's re costs ~10 ns per character per pattern).    */

static inline int is_b64(Py_UCS4 c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '_' || c == '-';
}
static inline int is_hex(Py_UCS4 c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}
static inline int is_ascii_letter(Py_UCS4 c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
static inline int is_leet_sub(Py_UCS4 c) {
    return c == '0' || c == '1' || c == '3' || c == '4' || c == '5' || c == '7' || c == '$';
}
static inline int is_leet_class(Py_UCS4 c) {
    return is_word(c) || c == '@' || c == '$' || c == '!' || c == '|';
}
static inline int is_spaced_sep(Py_UCS4 c) {
    return c == ' ' || c == '.' || c == '-' || c == '_' || c == '*';
}
static inline int is_decimal(Py_UCS4 c) { return c < 128 ? (c >= '0' && c <= '9') : Py_UNICODE_ISDECIMAL(c); }

/* Run [a, b) of leet-class characters starts like an ordinal: \d+(st|nd|rd|th)\b */
static int ordinal_start(const Text *t, Py_ssize_t a, Py_ssize_t end) {
    Py_ssize_t i = a;
    while (i < end && is_decimal(CH(t, i))) i++;
    if (i == a || i + 2 > end) return 0;
    Py_UCS4 x = CH(t, i), y = CH(t, i + 1);
    int suffix = (x == 's' && y == 't') || (x == 'n' && y == 'd') || (x == 'r' && y == 'd') ||
                 (x == 't' && y == 'h');
    return suffix && (i + 2 == end || !is_word(CH(t, i + 2)));
}

static int push_span(PyObject *list, Py_ssize_t start, Py_ssize_t end) {
    /* built directly: Py_BuildValue parses its format on every call (a leetspeak text has
     * dozens of spans) */
    PyObject *span = PyTuple_New(2), *a = PyLong_FromSsize_t(start), *b = PyLong_FromSsize_t(end);
    int failed = !span || !a || !b;
    if (!failed) {
        PyTuple_SET_ITEM(span, 0, a);
        PyTuple_SET_ITEM(span, 1, b);
        a = b = NULL;
        failed = PyList_Append(list, span) < 0;
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(span);
    return failed ? -1 : 0;
}

/* What each character is to the decoders, looked up once per character (ASCII from a table). */
enum {
    C_B64 = 1 << 0,      /* [A-Za-z0-9+/_-] */
    C_HEX = 1 << 1,      /* [0-9A-Fa-f] */
    C_HEXSEP = 1 << 2,   /* [ :] */
    C_LEET = 1 << 3,     /* [\w@$!|] */
    C_SUB = 1 << 4,      /* [013457$] */
    C_LETTER = 1 << 5,   /* [A-Za-z] */
    C_UPPER = 1 << 6,    /* [A-Z] */
    C_LOWDIG = 1 << 7,   /* [a-z0-9] */
    C_DIGIT = 1 << 8,    /* [0-9] */
    C_MARK = 1 << 9,     /* [.-] (Morse) */
    C_GAP = 1 << 10,     /* [ /] (between Morse letters) */
    C_WORD = 1 << 11,    /* \w */
    C_SPACESEP = 1 << 12 /* [ .\-_*] (spaced letters) */
};

static uint16_t ascii_class[128];

void ngc_init_ascii_class(void) {
    for (int c = 0; c < 128; c++) {
        uint16_t k = 0;
        if (is_b64((Py_UCS4)c)) k |= C_B64;
        if (is_hex((Py_UCS4)c)) k |= C_HEX;
        if (c == ' ' || c == ':') k |= C_HEXSEP;
        if (is_leet_class((Py_UCS4)c)) k |= C_LEET;
        if (is_leet_sub((Py_UCS4)c)) k |= C_SUB;
        if (is_ascii_letter((Py_UCS4)c)) k |= C_LETTER;
        if (c >= 'A' && c <= 'Z') k |= C_UPPER;
        if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) k |= C_LOWDIG;
        if (c >= '0' && c <= '9') k |= C_DIGIT;
        if (c == '.' || c == '-') k |= C_MARK;
        if (c == ' ' || c == '/') k |= C_GAP;
        if (is_word((Py_UCS4)c)) k |= C_WORD;
        if (is_spaced_sep((Py_UCS4)c)) k |= C_SPACESEP;
        ascii_class[c] = k;
    }
}

static inline uint16_t class_at(Py_UCS4 c) {
    if (c < 128) return ascii_class[c];
    return is_word(c) ? (C_WORD | C_LEET) : 0;
}

/* The end of the run of characters of class `mask` that holds position i. */
static inline Py_ssize_t run_end(const Text *t, Py_ssize_t i, uint16_t mask) {
    while (i < t->end && (class_at(CH(t, i)) & mask)) i++;
    return i;
}

/* A hex run [a, b) (hex digits, spaces and colons) holds 16 hex digits with at most one space
 * or colon between neighbours: the only places _HEX_BLOB can match. */
static int hex_run_hits(const Text *t, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t digits = 0;
    int gap = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        if (class_at(CH(t, i)) & C_HEX) {
            if (++digits >= 16) return 1;
            gap = 0;
        } else if (digits && !gap) {
            gap = 1;
        } else {
            digits = 0;
            gap = 0;
        }
    }
    return 0;
}

/* A run [a, b) of dots, dashes, spaces and slashes holds 8 groups of dots and dashes. */
static int morse_run_hits(const Text *t, Py_ssize_t a, Py_ssize_t b) {
    Py_ssize_t groups = 0;
    int in_group = 0;
    for (Py_ssize_t i = a; i < b; i++) {
        int mark = (class_at(CH(t, i)) & C_MARK) != 0;
        groups += mark && !in_group;
        in_group = mark;
    }
    return groups >= 8;
}

/* _SPACED's matches from `from` on, as re.finditer finds them:
 * (?<!\S)(?:\w[ .\-_*]){4,}\w(?!\S). A match starts after whitespace (or at the start) with k
 * greedy (word, separator) pairs; the regex then backtracks from k pairs down to 4 until a word
 * character followed by whitespace (or the end) closes it. When none does, no match starts at a
 * later pair of the same alternation either (its closing positions are a subset of these), and
 * the characters between are word characters, never after whitespace: the search goes on
 * after the pairs. Linear, where the regex scanned the rest of the text (~10 ns a character). */
static int spaced_matches(const Text *t, Py_ssize_t from, PyObject *out) {
    Py_ssize_t n = t->end, p = from;
    while (p + 1 < n) {
        if ((p > 0 && !Py_UNICODE_ISSPACE(CH(t, p - 1))) || !is_word(CH(t, p)) ||
            !is_spaced_sep(CH(t, p + 1))) {
            p++;
            continue;
        }
        Py_ssize_t k = 0, end = -1;
        while (p + 2 * k + 1 < n && is_word(CH(t, p + 2 * k)) && is_spaced_sep(CH(t, p + 2 * k + 1)))
            k++;
        for (Py_ssize_t j = k; j >= 4 && end < 0; j--) {
            Py_ssize_t q = p + 2 * j;
            if (q < n && is_word(CH(t, q)) && (q + 1 == n || Py_UNICODE_ISSPACE(CH(t, q + 1))))
                end = q + 1;
        }
        if (end >= 0) {
            if (push_span(out, p, end) < 0) return -1;
            p = end;
        } else {
            p += 2 * k + 1;
        }
    }
    return 0;
}

/* What signals() collects; the rare events fill it (see signal_event). */
typedef struct {
    const Text *t;
    PyObject *b64, *hex, *leet;
    Py_ssize_t leet_done, spaced;
    int morse, failed;
} Signals;

/* A run that has grown long enough to matter, or a leetspeak pair, at position i: examined
 * here, out of line, so that the scan's loop keeps its few counters in registers. */
static __attribute__((noinline)) void signal_event(Signals *g, Py_ssize_t i, int pair,
                                                   Py_ssize_t b64_run, Py_ssize_t hex_run,
                                                   Py_ssize_t morse_run, Py_ssize_t chain) {
    const Text *t = g->t;
    if (g->failed) return;
    if (pair && i >= g->leet_done) {
        Py_ssize_t a = i - 1, b = run_end(t, i, C_LEET);
        while (a > 0 && (class_at(CH(t, a - 1)) & C_LEET)) a--;
        g->leet_done = b;
        if (b - a >= 3 && !ordinal_start(t, a, b)) g->failed = push_span(g->leet, a, b) < 0;
    }
    if (b64_run == 16) {
        Py_ssize_t a = i - 15, b = run_end(t, i, C_B64);
        uint16_t seen = 0;
        for (Py_ssize_t j = a; j < b; j++) seen |= class_at(CH(t, j));
        /* the blob is the run and up to two "=" of padding after it */
        Py_ssize_t pad = b;
        while (pad < t->end && pad - b < 2 && CH(t, pad) == '=') pad++;
        if ((seen & C_UPPER) && (seen & C_LOWDIG))
            g->failed = g->failed || push_span(g->b64, a, pad) < 0;
    }
    if (hex_run == 16) {
        Py_ssize_t a = i - 15, b = run_end(t, i, C_HEX | C_HEXSEP);
        if (hex_run_hits(t, a, b)) g->failed = g->failed || push_span(g->hex, a, b) < 0;
    }
    if (morse_run == 15 && !g->morse)
        g->morse = morse_run_hits(t, i - 14, run_end(t, i, C_MARK | C_GAP));
    if (chain == 5 && g->spaced < 0) g->spaced = i - 8;
}

PyObject *ngc_signals(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"text", NULL};
    (void)module;
    PyObject *s;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U", keywords, &s)) return NULL;
    Text t;
    if (ngc_text_view(s, 0, PyUnicode_GET_LENGTH(s), &ngc_shared_scratch, &t) < 0) return NULL;
    Signals g = {&t, PyList_New(0), PyList_New(0), PyList_New(0), 0, -1, 0, 0};
    g.failed = !g.b64 || !g.hex || !g.leet;
    Py_ssize_t n = t.end, digits = 0;
    /* One pass keeps a few run lengths, each without a branch (the text alternates between
     * words, spaces and punctuation: a branch per decoder and class change mispredicted several
     * times a word, ~5 ns a character in all); a run that grows long enough to matter, or a
     * leetspeak pair, is an event, rare in a prompt, and only there is its whole run examined
     * (its end, its characters) exactly as the decoder's regex would:
     * - base64: a maximal [A-Za-z0-9+/_-] run of >= 16 with an upper-case letter and a
     *   lower-case letter or digit, with up to two "=" after it (what _B64_BLOB matches and
     *   _decode_b64 accepts);
     * - hex: a maximal run of [0-9A-Fa-f :] holding >= 16 hex digits, consecutive ones at most
     *   one [ :] apart (_HEX_BLOB's shape): such a run is 16 characters long or more;
     * - leet: a maximal run of [\w@$!|] of length >= 3, not an ordinal, holding
     *   [013457$][A-Za-z] (exactly what _LEET_WORD matches): the pair is the event;
     * - morse: a run of [.\- /] holding >= 8 groups of dots/dashes (15 characters or more);
     * - spaced: \w s \w s \w s \w s \w with s in [ .\-_*] (chain counts the word characters
     *   of such an alternation ending at i): where _SPACED's matches can start (see
     *   spaced_matches, which finds them from the first).
     * Masks, not conditionals: gcc turned `in ? run + 1 : 0` into a branch per run. */
    Py_ssize_t b64_run = 0, hex_run = 0, morse_run = 0;
    Py_ssize_t chain1 = 0, chain2 = 0; /* chain length ending at i-1 and at i-2 */
    Py_ssize_t chain_event = 5;        /* -1 (never) once the first chain of five is found */
    uint16_t before = 0;               /* the previous character's class */
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t k = class_at(CH(&t, i));
        digits += (k & C_DIGIT) != 0;
        b64_run = (b64_run + 1) & -(Py_ssize_t)((k & C_B64) != 0);
        hex_run = (hex_run + 1) & -(Py_ssize_t)((k & (C_HEX | C_HEXSEP)) != 0);
        morse_run = (morse_run + 1) & -(Py_ssize_t)((k & (C_MARK | C_GAP)) != 0);
        Py_ssize_t chain = (1 + (chain2 & -(Py_ssize_t)((before & C_SPACESEP) != 0))) &
                           -(Py_ssize_t)((k & C_WORD) != 0);
        /* a substitute followed by a letter: both leet-class, so inside one run */
        int pair = ((before & C_SUB) != 0) & ((k & C_LETTER) != 0);
        if (__builtin_expect(pair | (b64_run == 16) | (hex_run == 16) | (morse_run == 15) |
                                 (chain == chain_event),
                             0)) {
            signal_event(&g, i, pair, b64_run, hex_run, morse_run, chain);
            chain_event = g.spaced < 0 ? 5 : -1;
        }
        chain2 = chain1;
        chain1 = chain;
        before = k;
    }
    /* every _SPACED match starts with a chain of five, so none starts before the first */
    PyObject *runs = g.failed ? NULL : PyList_New(0);
    int failed = !runs || (g.spaced >= 0 && spaced_matches(&t, g.spaced, runs) < 0);
    ngc_scratch_trim(&ngc_shared_scratch);
    if (failed) {
        Py_XDECREF(g.b64);
        Py_XDECREF(g.hex);
        Py_XDECREF(g.leet);
        Py_XDECREF(runs);
        return NULL;
    }
    return Py_BuildValue("(NNNONn)", g.b64, g.hex, g.leet, g.morse ? Py_True : Py_False, runs,
                         digits);
}


/* ------------------------------------------------------------------------------------------ */
/* lower: str.lower() for the text the scorer and the phrase rules read. CPython lower-cases a  */
/* non-ASCII string a character at a time through a full case-mapping call (~2 ns a character; */
/* 32 KB of dataset text took ~65 us); here ASCII characters take a table, and only the others */
/* the call. A character whose lower case is not one character, and capital sigma (its lower   */
/* case depends on the letters around it), send the whole text to str.lower itself.           */

static PyObject *lower_by_python(PyObject *s) { return PyObject_CallMethod(s, "lower", NULL); }

/* The lower case of data (a str's kind) into out; 0 when a character needs str.lower (see
 * above). Inlined with a constant kind: reading through the kind switched at every character. */
__attribute__((always_inline)) static inline int lower_into(const void *data, int kind,
                                                           Py_ssize_t n, Py_UCS4 *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i), mapped[3];
        if (c < 128) {
            out[i] = c >= 'A' && c <= 'Z' ? c + 32 : c;
            continue;
        }
        if (c == 0x3A3 || _PyUnicode_ToLowerFull(c, mapped) != 1) return 0;
        out[i] = mapped[0];
    }
    return 1;
}

PyObject *ngc_lower(PyObject *module, PyObject *s) {
    (void)module;
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "lower: text must be a str");
        return NULL;
    }
    if (PyUnicode_IS_ASCII(s)) return lower_by_python(s); /* CPython's ASCII path is a table */
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    const void *data = PyUnicode_DATA(s);
    Py_UCS4 *out = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(Py_UCS4));
    if (!out) return PyErr_NoMemory();
    int ok;
    switch (PyUnicode_KIND(s)) {
    case PyUnicode_1BYTE_KIND:
        ok = lower_into(data, PyUnicode_1BYTE_KIND, n, out);
        break;
    case PyUnicode_2BYTE_KIND:
        ok = lower_into(data, PyUnicode_2BYTE_KIND, n, out);
        break;
    default:
        ok = lower_into(data, PyUnicode_4BYTE_KIND, n, out);
    }
    if (!ok) {
        PyMem_Free(out);
        return lower_by_python(s);
    }
    PyObject *result = PyUnicode_FromKindAndData(PyUnicode_4BYTE_KIND, out, n);
    PyMem_Free(out);
    return result;
}
