/* _syncer.c: the audit writer's durable write path, off the GIL (see writer.py).
 *
 * Why C: a Python writer thread that writes and fsyncs a batch must take the GIL back after
 * each of those system calls, from the event loop that holds it; on the one core a sidecar is
 * pinned to that hand-off cost ~500 us of CPU per batch, more than the fsync itself. Here a
 * pthread that never touches the interpreter takes submitted byte strings from a
 * mutex-protected FIFO, writes them in order, fdatasyncs, then counts the completion in an
 * eventfd that the event loop watches (loop.add_reader): the loop is woken once, by the
 * kernel, and resolves the batch's futures itself.
 *
 * Contract: jobs complete in submission order (tickets 1, 2, ...); `completed` is the newest
 * ticket whose bytes are written and, with `sync`, fdatasynced. Jobs queued while the thread
 * writes are taken together next time and share one fdatasync per descriptor (group commit).
 * The first failed write or fdatasync stops the thread for good (fail closed: after a failed
 * fdatasync the kernel may have dropped the dirty pages, so nothing later counts as durable):
 * `completed` stops there, `error` holds the errno, later jobs are dropped unwritten, and
 * `wait` returns at once. close() drains what was queued, then joins the thread.
 *
 * The stdout copy: a job may name an `echo` descriptor; its bytes are written there after the
 * group is durable and the loop has been told (so a slow stdout delays no answer, only the
 * next group: backpressure as before). A failed echo write is counted, never fatal: the file is
 * the record. `echoed` trails `completed` until the copies are out; wait() waits for it, so
 * the writer thread's own copies (written after wait) keep the file's order.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct Job {
    struct Job *next;
    int fd;
    int sync;
    int echo; /* -1: no stdout copy */
    size_t len;
    char data[];
} Job;

/* The event loop reads the state without the mutex (atomics): taking it right when the thread
 * wants it to publish a completion made each hand-off a futex wait and wake on both sides. The
 * mutex guards the queue and the sleeps on the two condition variables only. */
#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job was queued, or close() began */
    pthread_cond_t done; /* `echoed` moved, or the thread failed or ended (for wait()) */
    Job *head, *tail;
    unsigned long long submitted; /* tickets given (under mu) */
    unsigned long long completed; /* written and synced (atomic) */
    unsigned long long echoed;    /* and their stdout copies written (atomic) */
    unsigned long long echo_errors, synced_bytes, syncs; /* atomic: for tests and stats */
    int error;   /* errno of the first failure; 0 while none (atomic) */
    int running; /* the thread has not ended (atomic) */
    int waiters; /* wait() calls asleep on `done` (atomic; changed under mu) */
    int closing; /* close() began: drain the queue, then end (under mu) */
    int started; /* the thread was created (and so must be joined) */
    int efd;
} Syncer;

static int write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int sync_fd(int fd) {
    while (fdatasync(fd) != 0) {
        if (errno != EINTR)
            return errno;
    }
    return 0;
}

static void free_jobs(Job *job) {
    while (job != NULL) {
        Job *next = job->next;
        free(job);
        job = next;
    }
}

static void signal_loop(int efd) {
    uint64_t one = 1;
    /* EAGAIN only if the counter would overflow: the loop is woken already */
    while (write(efd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

static void wake_waiters(Syncer *s) {
    /* A waiter counts itself (under mu) before it checks `echoed`, and this reads the count
     * after `echoed` moved: either it saw the new value or it is counted and gets woken. */
    if (LOAD(s->waiters) > 0) {
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->done);
        pthread_mutex_unlock(&s->mu);
    }
}

static void *run(void *arg) {
    Syncer *s = arg;
    unsigned long long done = 0;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (s->head == NULL && !s->closing)
            pthread_cond_wait(&s->work, &s->mu);
        Job *jobs = s->head;
        s->head = s->tail = NULL;
        pthread_mutex_unlock(&s->mu);
        if (jobs == NULL)
            break; /* closing, and the queue is drained */
        unsigned long long last = done;
        for (Job *j = jobs; j != NULL; j = j->next)
            last++; /* tickets are given in queue order: this group ends at `last` */

        int err = 0;
        size_t bytes = 0;
        unsigned long long syncs = 0;
        int dirty = -1; /* a descriptor written to since its last fdatasync */
        for (Job *j = jobs; j != NULL && !err; j = j->next) {
            if (dirty >= 0 && dirty != j->fd) {
                err = sync_fd(dirty); /* the old segment is durable before the next is written */
                syncs++;
                dirty = -1;
            }
            if (!err)
                err = write_all(j->fd, j->data, j->len);
            bytes += j->len;
            if (!err && j->sync && j->len > 0)
                dirty = j->fd;
        }
        if (!err && dirty >= 0) {
            err = sync_fd(dirty);
            syncs++;
        }
        if (err) {
            free_jobs(jobs);
            STORE(s->error, err);
            break;
        }
        STORE(s->synced_bytes, LOAD(s->synced_bytes) + bytes);
        STORE(s->syncs, LOAD(s->syncs) + syncs);
        STORE(s->completed, last);
        signal_loop(s->efd);

        unsigned long long echo_errors = 0;
        for (Job *j = jobs; j != NULL; j = j->next) {
            if (j->echo >= 0 && j->len > 0 && write_all(j->echo, j->data, j->len) != 0)
                echo_errors++;
        }
        free_jobs(jobs);
        STORE(s->echo_errors, LOAD(s->echo_errors) + echo_errors);
        STORE(s->echoed, last);
        done = last;
        wake_waiters(s);
    }
    /* ended: drained on close, or failed (what is still queued is never written) */
    pthread_mutex_lock(&s->mu);
    free_jobs(s->head);
    s->head = s->tail = NULL;
    STORE(s->running, 0);
    pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->mu);
    signal_loop(s->efd);
    return NULL;
}

static PyObject *syncer_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Syncer", kwlist))
        return NULL;
    Syncer *s = (Syncer *)type->tp_alloc(type, 0);
    if (s == NULL)
        return NULL;
    s->efd = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->done, NULL);
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(s);
        return NULL;
    }
    s->running = 1;
    int rc = pthread_create(&s->thread, NULL, run, s);
    if (rc != 0) {
        s->running = 0;
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        Py_DECREF(s);
        return NULL;
    }
    s->started = 1;
    return (PyObject *)s;
}

static void syncer_stop(Syncer *s) {
    if (!s->started)
        return;
    pthread_mutex_lock(&s->mu);
    s->closing = 1;
    pthread_cond_signal(&s->work);
    pthread_mutex_unlock(&s->mu);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(s->thread, NULL);
    Py_END_ALLOW_THREADS
    s->started = 0;
}

static void syncer_dealloc(Syncer *s) {
    syncer_stop(s);
    if (s->efd >= 0)
        close(s->efd);
    pthread_cond_destroy(&s->work);
    pthread_cond_destroy(&s->done);
    pthread_mutex_destroy(&s->mu);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *syncer_submit(Syncer *s, PyObject *args) {
    int fd, sync, echo = -1;
    Py_buffer buf;
    if (!PyArg_ParseTuple(args, "iy*p|i:submit", &fd, &buf, &sync, &echo))
        return NULL;
    Job *job = malloc(sizeof(Job) + (size_t)buf.len);
    if (job == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    job->next = NULL;
    job->fd = fd;
    job->sync = sync;
    job->echo = echo;
    job->len = (size_t)buf.len;
    memcpy(job->data, buf.buf, (size_t)buf.len);
    PyBuffer_Release(&buf);
    /* The thread holds the mutex only to swap the queue, never across I/O: no GIL release. */
    pthread_mutex_lock(&s->mu);
    if (s->closing || !LOAD(s->running)) {
        int error = LOAD(s->error);
        pthread_mutex_unlock(&s->mu);
        free(job);
        if (error) {
            errno = error;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        PyErr_SetString(PyExc_RuntimeError, "syncer is closed");
        return NULL;
    }
    if (s->tail != NULL)
        s->tail->next = job;
    else
        s->head = job;
    s->tail = job;
    unsigned long long ticket = ++s->submitted;
    pthread_mutex_unlock(&s->mu);
    /* after unlocking: a thread woken while the mutex is held would only block on it again */
    pthread_cond_signal(&s->work);
    return PyLong_FromUnsignedLongLong(ticket);
}

static PyObject *state(Syncer *s) {
    return Py_BuildValue("(Ki)", LOAD(s->completed), LOAD(s->error));
}

static PyObject *syncer_poll(Syncer *s, PyObject *Py_UNUSED(ignored)) {
    uint64_t count;
    /* consume the wake-up first, so a completion after it wakes the loop again */
    while (read(s->efd, &count, sizeof count) < 0 && errno == EINTR) {
    }
    return state(s);
}

static PyObject *syncer_wait(Syncer *s, PyObject *args) {
    unsigned long long ticket;
    if (!PyArg_ParseTuple(args, "K:wait", &ticket))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->mu);
    __atomic_add_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
    while (LOAD(s->echoed) < ticket && LOAD(s->running) && !LOAD(s->error) &&
           ticket <= s->submitted)
        pthread_cond_wait(&s->done, &s->mu);
    __atomic_sub_fetch(&s->waiters, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&s->mu);
    Py_END_ALLOW_THREADS
    return state(s);
}

static PyObject *syncer_close(Syncer *s, PyObject *Py_UNUSED(ignored)) {
    syncer_stop(s);
    return state(s);
}

static PyObject *syncer_fileno(Syncer *s, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(s->efd);
}

static PyObject *syncer_counters(Syncer *s, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue(
        "(KKK)", LOAD(s->synced_bytes), LOAD(s->syncs), LOAD(s->echo_errors));
}

static PyMethodDef syncer_methods[] = {
    {"submit", (PyCFunction)syncer_submit, METH_VARARGS,
     "submit(fd, data, sync, echo=-1) -> ticket: queue data to be written to fd (and "
     "fdatasynced), then copied to echo."},
    {"poll", (PyCFunction)syncer_poll, METH_NOARGS,
     "poll() -> (completed, errno): consume the eventfd's wake-up and report the state."},
    {"wait", (PyCFunction)syncer_wait, METH_VARARGS,
     "wait(ticket) -> (completed, errno): block (without the GIL) until ticket completed and "
     "its copy is echoed, or the thread failed or ended."},
    {"close", (PyCFunction)syncer_close, METH_NOARGS,
     "close() -> (completed, errno): write what is queued, then end the thread."},
    {"fileno", (PyCFunction)syncer_fileno, METH_NOARGS,
     "fileno() -> the eventfd, readable once a job completed or the thread ended."},
    {"counters", (PyCFunction)syncer_counters, METH_NOARGS,
     "counters() -> (bytes written and fdatasynced, fdatasync calls, failed echo writes)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SyncerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "packgate_sidecar.audit._syncer.Syncer",
    .tp_basicsize = sizeof(Syncer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A pthread that writes and fdatasyncs submitted byte strings in order.",
    .tp_new = syncer_new,
    .tp_dealloc = (destructor)syncer_dealloc,
    .tp_methods = syncer_methods,
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_syncer",
    "The audit writer's write + fdatasync thread, off the GIL (see _syncer.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__syncer(void) {
    if (PyType_Ready(&SyncerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SyncerType);
    if (PyModule_AddObject(m, "Syncer", (PyObject *)&SyncerType) < 0) {
        Py_DECREF(&SyncerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
