/* _scrubscan.c: is a secret in these bytes? One libc memmem per secret.
 *
 * Why C: scrub.py checks every byte the sidecar returns for each registered provider key, a
 * whole streamed answer at a time (~29 KB for the bench answer). CPython's `in` on bytes of that
 * size steps through them nearly byte by byte when the text is made of the key's characters (its
 * skip table is a 64-bit bloom filter that letters and digits fill): ~7 us per answer. glibc's
 * memmem skips by a hash of byte pairs and takes ~2 us. The Python path (scrub.py) is `in`; a
 * property test holds the two equal.
 */

#define _GNU_SOURCE 1 /* memmem; pyconfig.h defines it the same way */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* contains(data, needle) -> bool: whether `needle` occurs in `data` (as `needle in data`). */
static PyObject *contains(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "contains(data: bytes, needle: bytes)");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t length = PyBytes_GET_SIZE(args[1]);
    if (length == 0) {
        Py_RETURN_TRUE;  /* as `b"" in data` */
    }
    if (length > size) {
        Py_RETURN_FALSE;
    }
    const void *found = memmem(PyBytes_AS_STRING(args[0]), (size_t)size,
                               PyBytes_AS_STRING(args[1]), (size_t)length);
    return PyBool_FromLong(found != NULL);
}

static PyMethodDef methods[] = {
    {"contains", (PyCFunction)(void (*)(void))contains, METH_FASTCALL,
     "Whether `needle` occurs in `data` (see scrub.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scrubscan", "The secret search of scrub.py, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__scrubscan(void) { return PyModule_Create(&module); }
