/* _ngramcore.h: what the files of the compiled core share (see _ngramcore.c). */

#ifndef PACKGATE_NGRAMCORE_H
#define PACKGATE_NGRAMCORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define FNV_BASIS 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL
#define MAX_CHAR_SIZES 8

static inline uint64_t fnv(uint64_t h, Py_UCS4 c) { return (h ^ (uint64_t)c) * FNV_PRIME; }

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

/* Bit c set: c (below 0x10000) is \w. Filled once at import from Py_UNICODE_ISALNUM, which
 * costs several table lookups per call; every tokenising loop asks this of every character. */
#define NGC_INTERNAL __attribute__((visibility("hidden")))
NGC_INTERNAL extern uint8_t ngc_word_bits[0x10000 / 8];

/* \w as Python's re defines it for str patterns: alphanumeric (Unicode) or underscore. */
static inline int is_word(Py_UCS4 c) {
    if (c < 0x10000) return ngc_word_bits[c >> 3] >> (c & 7) & 1;
    return Py_UNICODE_ISALNUM(c);
}

typedef struct {
    Py_ssize_t start, end;
} Span;

/* A text as code points: [start, end) of `u`. Reading a str through PyUnicode_READ switches on
 * its kind at every character, so 1- and 2-byte strings are widened once into a scratch buffer
 * (a vectorised copy) and every loop below reads a plain array. */
typedef struct {
    const Py_UCS4 *u;
    Py_ssize_t start, end;
} Text;

#define CH(t, i) ((t)->u[(i)])

typedef struct {
    Py_UCS4 *buf;
    Py_ssize_t cap;
} Scratch;

typedef struct {
    Span *items;
    Py_ssize_t len, cap;
} Spans;

static inline uint64_t hash_span(uint64_t h, const Text *t, Span s) {
    for (Py_ssize_t i = s.start; i < s.end; i++) h = fnv(h, CH(t, i));
    return h;
}

/* Shared by the module's files (_ngramcore.c defines them). */

/* Used by the module-level functions and Lexicon methods; every user holds the GIL. */
NGC_INTERNAL extern Scratch ngc_shared_scratch;
NGC_INTERNAL int ngc_text_view(PyObject *s, Py_ssize_t start, Py_ssize_t end, Scratch *sc, Text *t);
NGC_INTERNAL void ngc_scratch_trim(Scratch *sc);
NGC_INTERNAL int ngc_text_from_args(PyObject *args, PyObject *kwargs, Scratch *sc, Text *t);
NGC_INTERNAL int ngc_spans_push(Spans *s, Py_ssize_t start, Py_ssize_t end);
NGC_INTERNAL int ngc_spans_grow(Spans *s); /* double the capacity */
NGC_INTERNAL int ngc_tokenize(const Text *t, Spans *out);

/* The scorer (_ngramscorer*.c, see _ngramscorer.h) and the text scanners (_textscan_*.c,
 * see _textscan.h). */
NGC_INTERNAL extern PyTypeObject ngc_ScorerType, ngc_LexiconType, ngc_TranslatorType,
    ngc_CharClassesType;
NGC_INTERNAL PyObject *ngc_segments(PyObject *module, PyObject *args, PyObject *kwargs);
NGC_INTERNAL PyObject *ngc_count_tokens(PyObject *module, PyObject *args, PyObject *kwargs);
NGC_INTERNAL PyObject *ngc_signals(PyObject *module, PyObject *args, PyObject *kwargs);
NGC_INTERNAL PyObject *ngc_lower(PyObject *module, PyObject *s);
NGC_INTERNAL void ngc_init_ascii_class(void);

#endif
