/* _jsonscan.c: whether orjson's reading of a JSON document is the strict one, in one pass.
 *
 * Why C: strict_json.py reads every request body and every whole answer with orjson, which is
 * fast but keeps the last of duplicate keys silently, reads integers wider than 64 bits as
 * floats, and nests up to 1024 levels. Proving a document free of those took a Python walk of
 * the parsed tree plus two passes over the bytes (~2 us for a 1 KB chat body, ~40 us for a
 * 20-turn chat); this pass reads the bytes once, skipping string contents with memchr.
 *
 * unambiguous(data, max_depth) -> bool is True only when, if `data` is valid JSON (orjson
 * decides that), then: no object has two keys with the same bytes and no key holds an escape
 * (so no two keys can decode to the same text), no string holds an escape of a UTF-16
 * surrogate, no integer has 19 digits or more (orjson may read it as a float), and nothing
 * nests deeper than `max_depth` arrays/objects. False means "not proven": strict_json then reads
 * the document with the standard library and its hooks, which decides and words the error. An
 * object with more than MAX_KEYS keys, or more than MAX_OPEN keys open at once, is not proven
 * either (that bounds the pairwise key comparison). Invalid JSON may get any answer: orjson
 * refuses it afterwards. The property tests in tests/unit/sidecar/test_strict_json.py hold the
 * fast reading to the standard library's on raw documents.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH_LIMIT 256
#define MAX_KEYS 128
#define MAX_OPEN 512

typedef struct {
    Py_ssize_t start;
    Py_ssize_t len;
} Span;

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The end (index of the closing quote) of the string whose contents start at `at`, or -1 when
 * it does not end or holds a surrogate escape. `escaped` tells whether it holds any escape. */
static Py_ssize_t string_end(const char *data, Py_ssize_t size, Py_ssize_t at, int *escaped) {
    *escaped = 0;
    const char *quote = NULL; /* the next quote at or after `at`, kept while no escape ate it */
    for (;;) {
        if (quote == NULL || quote < data + at) {
            quote = at < size ? memchr(data + at, '"', (size_t)(size - at)) : NULL;
            if (quote == NULL) {
                return -1;
            }
        }
        const char *slash = memchr(data + at, '\\', (size_t)(quote - (data + at)));
        if (slash == NULL) {
            return quote - data;
        }
        *escaped = 1;
        Py_ssize_t e = slash - data;
        if (e + 1 >= size) {
            return -1;
        }
        if (data[e + 1] == 'u') {
            if (e + 5 >= size) {
                return -1;
            }
            char h = data[e + 2], l = data[e + 3];
            if ((h == 'd' || h == 'D') && ((l >= '8' && l <= '9') || (l >= 'a' && l <= 'f') ||
                                           (l >= 'A' && l <= 'F'))) {
                return -1;
            }
            at = e + 6;
        } else {
            at = e + 2; /* skips an escaped quote or backslash too */
        }
    }
}

static int scan(const char *data, Py_ssize_t size, int max_depth) {
    char is_object[MAX_DEPTH_LIMIT + 1];
    int key_base[MAX_DEPTH_LIMIT + 1];
    Span keys[MAX_OPEN];
    int open_keys = 0;
    int depth = 0;
    int expect_key = 0;
    Py_ssize_t i = 0;
    while (i < size) {
        char c = data[i];
        if (c == '"') {
            int escaped;
            Py_ssize_t end = string_end(data, size, i + 1, &escaped);
            if (end < 0) {
                return 0;
            }
            if (expect_key && depth > 0 && is_object[depth]) {
                if (escaped) {
                    return 0;
                }
                Py_ssize_t len = end - (i + 1);
                for (int k = key_base[depth]; k < open_keys; k++) {
                    if (keys[k].len == len && memcmp(data + keys[k].start, data + i + 1, (size_t)len) == 0) {
                        return 0;
                    }
                }
                if (open_keys >= MAX_OPEN || open_keys - key_base[depth] >= MAX_KEYS) {
                    return 0;
                }
                keys[open_keys].start = i + 1;
                keys[open_keys].len = len;
                open_keys++;
                expect_key = 0;
            }
            i = end + 1;
        } else if (c == '{' || c == '[') {
            if (++depth > max_depth) {
                return 0;
            }
            is_object[depth] = (char)(c == '{');
            key_base[depth] = open_keys;
            expect_key = c == '{';
            i++;
        } else if (c == '}' || c == ']') {
            if (depth == 0) {
                return 0;
            }
            if (is_object[depth]) {
                open_keys = key_base[depth];
            }
            depth--;
            expect_key = 0;
            i++;
        } else if (c == ',') {
            expect_key = depth > 0 && is_object[depth];
            i++;
        } else if (c == '-' || is_digit(c)) {
            Py_ssize_t start = i;
            if (c == '-') {
                i++;
            }
            while (i < size && is_digit(data[i])) {
                i++;
            }
            Py_ssize_t digits = i - start - (c == '-');
            if (i < size && (data[i] == '.' || data[i] == 'e' || data[i] == 'E')) {
                while (i < size && (is_digit(data[i]) || data[i] == '.' || data[i] == 'e' ||
                                    data[i] == 'E' || data[i] == '+' || data[i] == '-')) {
                    i++;
                }
            } else if (digits >= 19) {
                return 0;
            }
        } else {
            i++; /* whitespace, ':' and the letters of true, false, null */
        }
    }
    return depth == 0;
}

static PyObject *unambiguous(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "unambiguous(data: bytes, max_depth: int)");
        return NULL;
    }
    long max_depth = PyLong_AsLong(args[1]);
    if (max_depth == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (max_depth < 0 || max_depth > MAX_DEPTH_LIMIT) {
        PyErr_SetString(PyExc_ValueError, "max_depth must be within 0..256");
        return NULL;
    }
    int ok = scan(PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), (int)max_depth);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"unambiguous", (PyCFunction)(void (*)(void))unambiguous, METH_FASTCALL,
     "Whether orjson's reading of a JSON document is provably the strict one."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsonscan", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__jsonscan(void) { return PyModule_Create(&module); }
