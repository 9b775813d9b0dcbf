/* _ngramcore: the compiled scoring core of the prompt-injection model.
 *
 * Why this exists: scoring a prompt means hashing every word, word bigram and character 4-gram
 * of its text and summing their weights; in Python that costs about 1 ms per KB, on every
 * request. This file does the same per-character loop in C (a few microseconds per KB): tokens
 * are \w+ runs exactly as Python's `re` defines them, every feature is hashed with FNV-1a over
 * its code points plus a 64-bit finaliser into a 2^bits table of float32 weights, and a small
 * open-addressing set de-duplicates buckets per span. `pooled_logit` also finds the spans
 * (segments.py's windows and sentences) and pools them, so a variant costs one call; `Lexicon`
 * finds the phrase rules' words and where they start. The exact definition of
 * the features, the hash and the model file lives in `injection.py`'s docstring; the pure-Python
 * reference (`ngram_ref.py`) implements the same functions and a test holds both to 1e-6.
 *
 * Why C and not Rust/PyO3: the function is two hundred lines of array loops with no allocation
 * in the hot path and nothing that needs Rust's guarantees beyond bounds we check once; C builds
 * with the gcc every build image already has, through the setuptools `pip install` the project
 * already uses, with no crates, no maturin and no second toolchain in the Dockerfile's build
 * stage or on a fresh machine.
 *
 * Files: this one holds what the others share (text views, tokens) and the module itself;
 * the Scorer, one file per part sharing `_ngramscorer.h`: `_ngramscorer.c` (the type),
 * `_ngramscorer_extract.c` (a span's features), `_ngramscorer_sentences.c` (segments and
 * sentence pieces), `_ngramscorer_seq.c` and `_ngramscorer_pool.c` (pooling); the text
 * scanners the normaliser and the phrase rules use, one file each, sharing `_textscan.h`:
 * `_textscan_lexicon.c` (Lexicon), `_textscan_translator.c` (Translator),
 * `_textscan_charclasses.c` (CharClasses), `_textscan_signals.c` (signals, count_tokens) and
 * `_textscan_lower.c` (lower).
 *
 * Thread safety: every entry point holds the GIL for its whole run (a call takes microseconds
 * per KB, less than a GIL hand-off), so the per-object scratch buffers and stamp array are never
 * used by two calls at once.
 */

#include "_ngramcore.h"

Scratch ngc_shared_scratch;
uint8_t ngc_word_bits[0x10000 / 8];

static void init_word_bits(void) {
    for (Py_UCS4 c = 0; c < 0x10000; c++) {
        int word = c < 128 ? ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                              (c >= 'A' && c <= 'Z') || c == '_')
                           : Py_UNICODE_ISALNUM(c);
        if (word) ngc_word_bits[c >> 3] |= (uint8_t)(1u << (c & 7));
    }
}

int ngc_text_view(PyObject *s, Py_ssize_t start, Py_ssize_t end, Scratch *sc, Text *t) {
    Py_ssize_t n = end - start;
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    t->start = 0;
    t->end = n;
    if (kind == PyUnicode_4BYTE_KIND) {
        t->u = (const Py_UCS4 *)data + start;
        return 0;
    }
    if (n > sc->cap) {
        Py_ssize_t cap = n < 4096 ? 4096 : n;
        Py_UCS4 *buf = PyMem_Realloc(sc->buf, (size_t)cap * sizeof(Py_UCS4));
        if (!buf) {
            PyErr_NoMemory();
            return -1;
        }
        sc->buf = buf;
        sc->cap = cap;
    }
    if (kind == PyUnicode_1BYTE_KIND) {
        const Py_UCS1 *p = (const Py_UCS1 *)data + start;
        for (Py_ssize_t i = 0; i < n; i++) sc->buf[i] = p[i];
    } else {
        const Py_UCS2 *p = (const Py_UCS2 *)data + start;
        for (Py_ssize_t i = 0; i < n; i++) sc->buf[i] = p[i];
    }
    t->u = sc->buf;
    return 0;
}

/* Give back a scratch buffer a very large text grew, so one 8 MB prompt does not stay resident. */
void ngc_scratch_trim(Scratch *sc) {
    if (sc->cap > (1 << 18)) {
        PyMem_Free(sc->buf);
        sc->buf = NULL;
        sc->cap = 0;
    }
}

int ngc_text_from_args(PyObject *args, PyObject *kwargs, Scratch *sc, Text *t) {
    static char *keywords[] = {"text", "start", "end", NULL};
    PyObject *s;
    Py_ssize_t start = 0, end = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|nn", keywords, &s, &start, &end)) {
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (end > n) end = n;
    if (start < 0 || start > end) {
        PyErr_Format(PyExc_ValueError, "span [%zd, %zd) is not inside the text (length %zd)",
                     start, end, n);
        return -1;
    }
    return ngc_text_view(s, start, end, sc, t);
}

int ngc_spans_grow(Spans *s) {
    Py_ssize_t cap = s->cap ? s->cap * 2 : 256;
    Span *grown = PyMem_Realloc(s->items, (size_t)cap * sizeof(Span));
    if (!grown) {
        PyErr_NoMemory();
        return -1;
    }
    s->items = grown;
    s->cap = cap;
    return 0;
}

int ngc_spans_push(Spans *s, Py_ssize_t start, Py_ssize_t end) {
    if (s->len == s->cap && ngc_spans_grow(s) < 0) return -1;
    s->items[s->len].start = start;
    s->items[s->len].end = end;
    s->len++;
    return 0;
}

/* The \w+ runs of t. Without a branch per character: a loop that ran to each token's end
 * mispredicted its exit at every token. Each position where the character class changes is a
 * token's start or end; they are written in turn, the count moving on only at a change, into
 * the spans array seen as a flat array of offsets (Span is two Py_ssize_t). */
int ngc_tokenize(const Text *t, Spans *out) {
    out->len = 0;
    Py_ssize_t need = (t->end - t->start) / 2 + 1; /* at most this many tokens */
    while (out->cap < need)
        if (ngc_spans_grow(out) < 0) return -1;
    Py_ssize_t *at = &out->items[0].start, count = 0;
    int prev = 0;
    for (Py_ssize_t i = t->start; i < t->end; i++) {
        int word = is_word(CH(t, i));
        at[count] = i;
        count += word ^ prev;
        prev = word;
    }
    if (prev) at[count++] = t->end;
    out->len = count / 2;
    return 0;
}

static PyMethodDef module_methods[] = {
    {"count_tokens", (PyCFunction)(void (*)(void))ngc_count_tokens, METH_VARARGS | METH_KEYWORDS,
     "count_tokens(text, length) -> int: how many \\w+ tokens have exactly `length` characters."},
    {"segments", (PyCFunction)(void (*)(void))ngc_segments, METH_VARARGS | METH_KEYWORDS,
     "segments(text) -> list[(start, end)]: the spans segments.py gives (for tests)."},
    {"signals", (PyCFunction)(void (*)(void))ngc_signals, METH_VARARGS | METH_KEYWORDS,
     "signals(text) -> (base64, hex, leet, morse, spaced, ascii_digits)\n\n"
     "Where each decoder of normalize.py can apply (spans for base64 blobs, hex regions and\n"
     "leetspeak words; a flag for Morse; the spaced-letter runs _SPACED matches); see\n"
     "ngram_ref.signals."},
    {"lower", (PyCFunction)ngc_lower, METH_O,
     "lower(text) -> str: text.lower(), faster on mostly-ASCII text that is not all ASCII."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_ngramcore",
    "Compiled core of the prompt-injection scorer (see _ngramcore.c and injection.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ngramcore(void) {
    init_word_bits();
    ngc_init_ascii_class();
    if (PyType_Ready(&ngc_ScorerType) < 0 || PyType_Ready(&ngc_LexiconType) < 0 ||
        PyType_Ready(&ngc_CharClassesType) < 0 || PyType_Ready(&ngc_TranslatorType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (!m) return NULL;
    Py_INCREF(&ngc_ScorerType);
    Py_INCREF(&ngc_LexiconType);
    Py_INCREF(&ngc_CharClassesType);
    Py_INCREF(&ngc_TranslatorType);
    if (PyModule_AddObject(m, "Scorer", (PyObject *)&ngc_ScorerType) < 0 ||
        PyModule_AddObject(m, "Lexicon", (PyObject *)&ngc_LexiconType) < 0 ||
        PyModule_AddObject(m, "CharClasses", (PyObject *)&ngc_CharClassesType) < 0 ||
        PyModule_AddObject(m, "Translator", (PyObject *)&ngc_TranslatorType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
