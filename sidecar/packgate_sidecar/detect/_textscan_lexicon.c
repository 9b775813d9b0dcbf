/* _textscan_lexicon.c: Lexicon, which of a fixed word list occur as \w+ tokens of a text (and
 * where), without building the tokens. The phrase rules ask this of every prompt variant; an
 * entry ending in "*" is a prefix: it matches every token that starts with it. One of the text
 * scanners of the compiled core (see _ngramcore.c for the module, _textscan.h for what they
 * share). */

#include "_textscan.h"

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
