/* _textscan_lower.c: lower, str.lower() for the text the scorer and the phrase rules read.
 * CPython lower-cases a non-ASCII string a character at a time through a full case-mapping call
 * (~2 ns a character; 32 KB of dataset text took ~65 us); here ASCII characters take a table,
 * and only the others the call. A character whose lower case is not one character, and capital
 * sigma (its lower case depends on the letters around it), send the whole text to str.lower
 * itself. One of the text scanners of the compiled core (see _ngramcore.c). */

#include "_textscan.h"

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
