/* _sseframes.c: the texts of a run of SSE events that share one frame, found in one pass.
 *
 * Why C: an upstream chunk of a streamed chat answer holds dozens of delta events that differ
 * only in their text (the provider's id, model and choice layout repeat around it). sse.py reads
 * such a run as the last plain event's bytes before and after its text (the frame) around other
 * texts; finding where each text ends took ~0.5 us of Python per event (splits, joins and regex
 * checks over windows of the chunk), this takes one pass over the bytes. The Responses API's text
 * events differ in their `sequence_number` too: the frame may pause at one integer (`mid`). The Python reference
 * (sse_frames.py) says the same thing event by event; a property test holds the two equal.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* A byte that cannot be inside a plain text: a quote ends a JSON string, a backslash starts an
 * escape, and a raw control character is not valid JSON. */
static unsigned char special[256];
/* A byte that cannot be inside a varying value: a special byte or any non-ASCII one (the value
 * is never decoded, so it must be ASCII to be valid UTF-8; OpenAI's padding is alphanumeric). */
static unsigned char special_value[256];

/* The end of the plain run of bytes from `at`: the first byte `stops` marks, or `size`. */
static Py_ssize_t plain_end(const char *data, Py_ssize_t at, Py_ssize_t size,
                            const unsigned char *stops) {
    while (at < size && !stops[(unsigned char)data[at]]) {
        at++;
    }
    return at;
}

/* frame_texts(data, at, head, tail, suffix) -> (list[bytes], int)
 *
 * The texts of the consecutive complete events from `at` on that are `head` + text + `tail` +
 * a blank line, where the text holds no special byte, and where the run ends. With a `suffix`,
 * an event is `head` + text + `tail` + value + `suffix` + a blank line instead, the value
 * printable ASCII without a quote or backslash (a string value that changes from event to
 * event, such as OpenAI's `obfuscation` padding). The run ends at the first event that is not such an event (or is not
 * complete). `tail` and a `suffix` must start with a quote (the one that closes the string
 * before them), so a text or value ends at its first special byte.
 *
 * With a sixth argument `mid`, an event is `head` + a JSON integer + `mid` + text + ... instead:
 * the integer is `0` or 1 to 16 digits without a leading zero (the Responses API numbers every
 * event with `sequence_number`), and `mid` must not start with a digit, so the integer ends at
 * its first non-digit byte. */
static PyObject *frame_texts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs < 5 || nargs > 6 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyBytes_Check(args[2]) || !PyBytes_Check(args[3]) || !PyBytes_Check(args[4]) ||
        (nargs == 6 && !PyBytes_Check(args[5]))) {
        PyErr_SetString(PyExc_TypeError,
                        "frame_texts(data: bytes, at: int, head: bytes, tail: bytes, suffix: bytes"
                        "[, mid: bytes])");
        return NULL;
    }
    const char *mid = nargs == 6 ? PyBytes_AS_STRING(args[5]) : "";
    Py_ssize_t mid_len = nargs == 6 ? PyBytes_GET_SIZE(args[5]) : 0;
    if (mid_len > 0 && mid[0] >= '0' && mid[0] <= '9') {
        PyErr_SetString(PyExc_ValueError, "mid must not start with a digit");
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
    const char *suffix = PyBytes_AS_STRING(args[4]);
    Py_ssize_t suffix_len = PyBytes_GET_SIZE(args[4]);
    if (at < 0 || tail_len == 0 || tail[0] != '"' || (suffix_len > 0 && suffix[0] != '"')) {
        PyErr_SetString(PyExc_ValueError,
                        "at must be >= 0 and tail (and a suffix) must start with a quote");
        return NULL;
    }
    PyObject *texts = PyList_New(0);
    if (texts == NULL) {
        return NULL;
    }
    while (size - at >= head_len && memcmp(data + at, head, (size_t)head_len) == 0) {
        Py_ssize_t start = at + head_len;
        if (mid_len > 0) {
            Py_ssize_t digits = start;
            while (digits < size && digits - start < 17 && data[digits] >= '0' &&
                   data[digits] <= '9') {
                digits++;
            }
            Py_ssize_t count = digits - start;
            if (count == 0 || count > 16 || (count > 1 && data[start] == '0') ||
                size - digits < mid_len || memcmp(data + digits, mid, (size_t)mid_len) != 0) {
                break;
            }
            start = digits + mid_len;
        }
        Py_ssize_t end = plain_end(data, start, size, special);
        if (size - end < tail_len || memcmp(data + end, tail, (size_t)tail_len) != 0) {
            break;
        }
        Py_ssize_t next = end + tail_len;
        if (suffix_len > 0) {
            next = plain_end(data, next, size, special_value);
            if (size - next < suffix_len || memcmp(data + next, suffix, (size_t)suffix_len) != 0) {
                break;
            }
            next += suffix_len;
        }
        if (size - next < 2 || data[next] != '\n' || data[next + 1] != '\n') {
            break;
        }
        PyObject *text = PyBytes_FromStringAndSize(data + start, end - start);
        if (text == NULL || PyList_Append(texts, text) < 0) {
            Py_XDECREF(text);
            Py_DECREF(texts);
            return NULL;
        }
        Py_DECREF(text);
        at = next + 2;
    }
    PyObject *result = Py_BuildValue("(Nn)", texts, at);
    return result;
}

/* frame_seek(data, at, count, head_len, chars) -> (int, int, int)
 *
 * In the run of `count` frame events at `at` that frame_texts found (a `head` of `head_len`
 * bytes, no `mid`): the last event whose text starts within the first `chars` characters of the
 * run's texts joined (the first event at least, the last at most), how many characters come
 * before its text, and where the event starts. An event's text ends at its first quote, the event
 * at the LF after that (its blank line); the texts are UTF-8, so a character is a byte that is not
 * a continuation byte. sse.py's _frame_run asks it where the released text stops matching the
 * run: a Python walk over the events and their lengths took ~0.2 us per event. */
static PyObject *frame_seek(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyBytes_Check(args[0]) || !PyLong_Check(args[1]) ||
        !PyLong_Check(args[2]) || !PyLong_Check(args[3]) || !PyLong_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError,
                        "frame_seek(data: bytes, at: int, count: int, head_len: int, chars: int)");
        return NULL;
    }
    const char *data = PyBytes_AS_STRING(args[0]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t at = PyLong_AsSsize_t(args[1]);
    Py_ssize_t count = PyLong_AsSsize_t(args[2]);
    Py_ssize_t head_len = PyLong_AsSsize_t(args[3]);
    Py_ssize_t chars = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (at < 0 || count < 1 || head_len < 0) {
        PyErr_SetString(PyExc_ValueError, "at and head_len must be >= 0, count >= 1");
        return NULL;
    }
    Py_ssize_t before = 0;
    for (Py_ssize_t number = 0;; number++) {
        Py_ssize_t start = at + head_len;
        const char *quote = start < size ? memchr(data + start, '"', (size_t)(size - start)) : NULL;
        if (quote == NULL) {
            break;
        }
        Py_ssize_t end = quote - data;
        Py_ssize_t length = 0;
        for (Py_ssize_t byte = start; byte < end; byte++) {
            length += ((unsigned char)data[byte] & 0xC0) != 0x80;
        }
        if (number == count - 1 || before + length > chars) {
            return Py_BuildValue("(nnn)", number, before, at);
        }
        before += length;
        const char *lf = memchr(quote, '\n', (size_t)(size - end));
        if (lf == NULL) {
            break;
        }
        at = (lf - data) + 2;
    }
    PyErr_SetString(PyExc_ValueError, "the data holds fewer frame events than count");
    return NULL;
}

static PyMethodDef methods[] = {
    {"frame_texts", (PyCFunction)(void (*)(void))frame_texts, METH_FASTCALL,
     "The texts of the run of frame events at `at` and its end (see sse_frames.py)."},
    {"frame_seek", (PyCFunction)(void (*)(void))frame_seek, METH_FASTCALL,
     "The event of a run holding a character offset of its texts (see sse_frames.py)."},
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
    for (int c = 0; c < 256; c++) {
        special_value[c] = special[c] || c >= 0x80;
    }
    return PyModule_Create(&module);
}
