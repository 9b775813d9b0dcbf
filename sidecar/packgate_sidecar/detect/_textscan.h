/* _textscan.h: what the text scanners' files (_textscan_*.c) share, private to the module
 * (hidden visibility, nothing exported; the module itself is in _ngramcore.c). The CharClasses
 * layout and its class lookup are here because Translator.apply_words runs that lookup on every
 * character: as a `static inline` it stays inlined in both files, as it was in one. */

#ifndef PACKGATE_TEXTSCAN_H
#define PACKGATE_TEXTSCAN_H

#include "_ngramcore.h"

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

static inline uint8_t textscan_class_of(const CharClasses *self, Py_UCS4 c) {
    if (c < 0x10000) return self->bmp[c];
    uint8_t mask = 0;
    for (Py_ssize_t k = 0; k < self->nastral; k++)
        if (c >= self->astral[k].lo && c <= self->astral[k].hi) mask |= self->astral[k].mask;
    return mask;
}

/* Append (start, end) to a list (_textscan_signals.c); 0, or -1 with an exception set. */
NGC_INTERNAL int textscan_push_span(PyObject *list, Py_ssize_t start, Py_ssize_t end);

#endif
