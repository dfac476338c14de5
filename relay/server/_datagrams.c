/* A pass's UDP datagrams in one system call: sendmmsg(2) for relay/server/links.py's UdpWriter.
 *
 * Why: at the end of a pass the room has one datagram for each UDP member it wrote to, and on
 * a virtual machine each `sendto` is a system call whose entry and exit cost about as much as
 * the relay's own work on the datagram (docs/architecture.md). One sendmmsg for the pass sends
 * them all with one entry and exit. The kernel's per-datagram work stays.
 *
 *     send_batch(fd, packets, names, start) -> (sent, errno)
 *
 * sends packets[start:] to names[start:] (each a packed sockaddr, bytes) on the datagram socket
 * `fd`, as many as the kernel takes. `sent` counts those sent from `start`; `errno` is 0 when
 * all went, else the error that stopped the batch at packets[start + sent] (EAGAIN: the socket's
 * buffer is full; any other: that datagram could not be sent). The caller decides what follows.
 * The GIL is held: the call does not block (the socket is non-blocking) and lasts microseconds.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define CHUNK 64 /* datagrams per sendmmsg: a pass to more members takes several */

static PyObject *send_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "send_batch(fd, packets, names, start)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) return NULL;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    PyObject *packets = args[1], *names = args[2];
    if (!PyList_CheckExact(packets) || !PyList_CheckExact(names)) {
        PyErr_SetString(PyExc_TypeError, "packets and names must be lists");
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(packets);
    if (PyList_GET_SIZE(names) != count) {
        PyErr_SetString(PyExc_ValueError, "one name per packet");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[3]);
    if (start == -1 && PyErr_Occurred()) return NULL;
    if (start < 0 || start > count) {
        PyErr_SetString(PyExc_IndexError, "start out of range");
        return NULL;
    }
    struct mmsghdr headers[CHUNK];
    struct iovec vectors[CHUNK];
    Py_ssize_t done = start;
    int error = 0;
    while (done < count) {
        int n = count - done < CHUNK ? (int)(count - done) : CHUNK;
        memset(headers, 0, sizeof(struct mmsghdr) * n);
        for (int i = 0; i < n; i++) {
            PyObject *packet = PyList_GET_ITEM(packets, done + i), *name = PyList_GET_ITEM(names, done + i);
            if (!PyBytes_CheckExact(packet) || !PyBytes_CheckExact(name)) {
                PyErr_SetString(PyExc_TypeError, "packets and names must be bytes");
                return NULL;
            }
            if (PyBytes_GET_SIZE(name) > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
                PyErr_SetString(PyExc_ValueError, "a name longer than any socket address");
                return NULL;
            }
            vectors[i].iov_base = PyBytes_AS_STRING(packet);
            vectors[i].iov_len = (size_t)PyBytes_GET_SIZE(packet);
            headers[i].msg_hdr.msg_iov = &vectors[i];
            headers[i].msg_hdr.msg_iovlen = 1;
            headers[i].msg_hdr.msg_name = PyBytes_AS_STRING(name);
            headers[i].msg_hdr.msg_namelen = (socklen_t)PyBytes_GET_SIZE(name);
        }
        int sent, again;
        do {
            sent = sendmmsg((int)fd, headers, (unsigned int)n, MSG_DONTWAIT);
        } while (sent < 0 && errno == EINTR);
        if (sent < 0) {
            error = errno;
            break;
        }
        done += sent;
        if (sent < n) { /* stopped short (an error after the first is not reported): ask again */
            do {
                again = sendmmsg((int)fd, &headers[sent], 1, MSG_DONTWAIT);
            } while (again < 0 && errno == EINTR);
            if (again < 0) {
                error = errno;
                break;
            }
            done += again;
        }
    }
    return Py_BuildValue("(ni)", done - start, error);
}

static PyMethodDef methods[] = {
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL,
     "send_batch(fd, packets, names, start) -> (sent, errno): sendmmsg of packets[start:]"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "relay.server._datagrams",
    .m_doc = "A pass's UDP datagrams in one sendmmsg (relay/server/links.py's UdpWriter uses it when built).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__datagrams(void) { return PyModule_Create(&module); }
