/* _sseframes.c: the texts of a run of SSE events that share one frame, found in one pass.
 *
 * Why C: an upstream chunk of a streamed chat answer holds dozens of delta events that differ
 * only in their text (the provider's id, model and choice layout repeat around it). sse.py reads
 * such a run as the last plain event's bytes before and after its text (the frame) around other
 * texts; finding where each text ends took ~0.5 us of Python per event (splits, joins and regex
 * checks over windows of the chunk), this takes one pass over the bytes. The Python reference
 * (sse_frames.py) says the same thing event by event; a property test holds the two equal.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A byte that cannot be inside a plain text: a quote ends a JSON string, a backslash starts an
 * escape, and a raw control character is not valid JSON. */
static unsigned char special[256];

/* frame_texts(data, at, head, tail) -> list[bytes]
 *
 * The texts of the consecutive complete events from `at` on that are `head` + text + `tail` +
 * a blank line, where the text holds no special byte: the run ends at the first event that is
 * not (or is not complete). `tail` must start with the quote that closes the text (as every
 * chat frame's does), so a text ends at its first special byte. */
static PyObject *frame_texts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyBytes_Check(args[2]) || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "frame_texts(data: bytes, at: int, head: bytes, tail: bytes)");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    if (at == -1 && PyErr_Occurred()) {
        return NULL;
    }
    const char *head = PyBytes_AS_STRING(args[2]);
    Py_ssize_t head_len = PyBytes_GET_SIZE(args[2]);
    const char *tail = PyBytes_AS_STRING(args[3]);
    Py_ssize_t tail_len = PyBytes_GET_SIZE(args[3]);
    if (at < 0 || tail_len == 0 || tail[0] != '"') {
        PyErr_SetString(PyExc_ValueError, "at must be >= 0 and tail must start with a quote");
        return NULL;
    }
    PyObject *texts = PyList_New(0);
    if (texts == NULL) {
        return NULL;
    }
    while (size - at >= head_len && memcmp(data + at, head, (size_t)head_len) == 0) {
        Py_ssize_t start = at + head_len;
        Py_ssize_t end = start;
        while (end < size && !special[(unsigned char)data[end]]) {
            end++;
        }
        if (size - end < tail_len + 2 || memcmp(data + end, tail, (size_t)tail_len) != 0 ||
            data[end + tail_len] != '\n' || data[end + tail_len + 1] != '\n') {
            break;
        }
        PyObject *text = PyBytes_FromStringAndSize(data + start, end - start);
        if (text == NULL || PyList_Append(texts, text) < 0) {
            Py_XDECREF(text);
            Py_DECREF(texts);
            return NULL;
        }
        Py_DECREF(text);
        at = end + tail_len + 2;
    }
    return texts;
}

static PyMethodDef methods[] = {
    {"frame_texts", (PyCFunction)(void (*)(void))frame_texts, METH_FASTCALL,
     "The texts of the run of frame events at `at` (see sse_frames.frame_texts)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sseframes", "The frame-run scan of sse.py, compiled.", -1, methods,
};

PyMODINIT_FUNC PyInit__sseframes(void) {
    for (int c = 0; c < 0x20; c++) {
        special[c] = 1;
    }
    special['"'] = 1;
    special['\\'] = 1;
    return PyModule_Create(&module);
}
