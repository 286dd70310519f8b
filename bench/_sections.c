/* Named C frames around Python functions, so that callgrind can count them.
 *
 * Under callgrind every Python function runs inside the same C function of the
 * interpreter, so its cost cannot be told apart. bench/sections.py compiles
 * this module and routes chosen Python functions through it: a call of section
 * N's function goes through the C function ``section_N`` (a coroutine's steps
 * through ``section_N_send``), whose inclusive count in callgrind's call graph
 * is then that Python function's inclusive count. Each section function is a
 * function of its own (noinline, no identical-code folding), so that callgrind
 * sees 64 different names.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

#define NSECTIONS 64

typedef PyObject *(*call_fn)(PyObject *, PyObject *const *, size_t, PyObject *);
typedef PySendResult (*send_fn)(PyObject *, PyObject *, PyObject **);

#define SECTION(n)                                                                       \
    __attribute__((noinline)) PyObject *section_##n(                                     \
        PyObject *fn, PyObject *const *args, size_t nargsf, PyObject *kwnames)           \
    {                                                                                    \
        PyObject *result = PyObject_Vectorcall(fn, args, nargsf, kwnames);               \
        __asm__ volatile("" ::"r"(n) : "memory");                                        \
        return result;                                                                   \
    }                                                                                    \
    __attribute__((noinline)) PySendResult section_##n##_send(                           \
        PyObject *iter, PyObject *arg, PyObject **result)                                \
    {                                                                                    \
        PySendResult status = PyIter_Send(iter, arg, result);                            \
        __asm__ volatile("" ::"r"(n) : "memory");                                        \
        return status;                                                                   \
    }

#define S8(a) SECTION(a##0) SECTION(a##1) SECTION(a##2) SECTION(a##3) \
              SECTION(a##4) SECTION(a##5) SECTION(a##6) SECTION(a##7)
S8(1) S8(2) S8(3) S8(4) S8(5) S8(6) S8(7) S8(8)

#define R8(a) section_##a##0, section_##a##1, section_##a##2, section_##a##3, \
              section_##a##4, section_##a##5, section_##a##6, section_##a##7
#define T8(a) section_##a##0_send, section_##a##1_send, section_##a##2_send, section_##a##3_send, \
              section_##a##4_send, section_##a##5_send, section_##a##6_send, section_##a##7_send
static call_fn calls[NSECTIONS] = {R8(1), R8(2), R8(3), R8(4), R8(5), R8(6), R8(7), R8(8)};
static send_fn sends[NSECTIONS] = {T8(1), T8(2), T8(3), T8(4), T8(5), T8(6), T8(7), T8(8)};

/* -- an awaitable whose steps run in section_N_send ---------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *coro;
    int index;
} Await;

static PyTypeObject AwaitType;

static void
await_dealloc(Await *self)
{
    Py_XDECREF(self->coro);
    PyObject_Free(self);
}

static PyObject *
await_self(PyObject *self)
{
    return Py_NewRef(self);
}

static PySendResult
await_am_send(Await *self, PyObject *arg, PyObject **result)
{
    return sends[self->index](self->coro, arg, result);
}

static PyObject *
await_step(Await *self, PyObject *arg)
{
    PyObject *result;
    PySendResult status = await_am_send(self, arg, &result);
    if (status == PYGEN_RETURN) {
        if (result == Py_None) {
            Py_DECREF(result);
            PyErr_SetNone(PyExc_StopIteration);
        }
        else {
            PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, result);
            Py_DECREF(result);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_StopIteration, exc);
                Py_DECREF(exc);
            }
        }
        return NULL;
    }
    return status == PYGEN_ERROR ? NULL : result;
}

static PyObject *
await_next(Await *self)
{
    PyObject *result;
    PySendResult status = await_am_send(self, Py_None, &result);
    if (status == PYGEN_RETURN) {
        if (result != Py_None) {
            PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, result);
            if (exc != NULL) {
                PyErr_SetObject(PyExc_StopIteration, exc);
                Py_DECREF(exc);
            }
        }
        Py_DECREF(result);
        return NULL;
    }
    return status == PYGEN_ERROR ? NULL : result;
}

static PyObject *
await_forward(Await *self, const char *name, PyObject *args)
{
    PyObject *method = PyObject_GetAttrString(self->coro, name);
    if (method == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Call(method, args, NULL);
    Py_DECREF(method);
    return result;
}

static PyObject *
await_throw(Await *self, PyObject *args)
{
    return await_forward(self, "throw", args);
}

static PyObject *
await_close(Await *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *args = PyTuple_New(0);
    PyObject *result = args == NULL ? NULL : await_forward(self, "close", args);
    Py_XDECREF(args);
    return result;
}

static PyMethodDef await_methods[] = {
    {"send", (PyCFunction)await_step, METH_O, NULL},
    {"throw", (PyCFunction)await_throw, METH_VARARGS, NULL},
    {"close", (PyCFunction)await_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyAsyncMethods await_as_async = {
    .am_await = await_self,
    .am_send = (sendfunc)await_am_send,
};

static PyTypeObject AwaitType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_sections.Await",
    .tp_basicsize = sizeof(Await),
    .tp_dealloc = (destructor)await_dealloc,
    .tp_as_async = &await_as_async,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_iter = await_self,
    .tp_iternext = (iternextfunc)await_next,
    .tp_methods = await_methods,
};

/* -- a callable (and method descriptor) that calls through section_N ----------------- */

typedef struct {
    PyObject_HEAD
    PyObject *fn;
    int index;
    int coroutine;
    vectorcallfunc vectorcall;
} Section;

static void
section_dealloc(Section *self)
{
    Py_XDECREF(self->fn);
    PyObject_Free(self);
}

static PyObject *
section_vectorcall(Section *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *result = calls[self->index](self->fn, args, nargsf, kwnames);
    if (result == NULL || !self->coroutine) {
        return result;
    }
    Await *wrapped = PyObject_New(Await, &AwaitType);
    if (wrapped == NULL) {
        Py_DECREF(result);
        return NULL;
    }
    wrapped->coro = result;
    wrapped->index = self->index;
    return (PyObject *)wrapped;
}

static PyObject *
section_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
section_getattro(Section *self, PyObject *name)
{
    /* __name__, __code__, __qualname__...: those of the wrapped function. */
    PyObject *found = PyObject_GenericGetAttr((PyObject *)self, name);
    if (found != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError)) {
        return found;
    }
    PyErr_Clear();
    return PyObject_GetAttr(self->fn, name);
}

static PyTypeObject SectionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_sections.Section",
    .tp_basicsize = sizeof(Section),
    .tp_dealloc = (destructor)section_dealloc,
    .tp_vectorcall_offset = offsetof(Section, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_getattro = (getattrofunc)section_getattro,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_descr_get = section_get,
};

static PyObject *
wrap(PyObject *module, PyObject *args)
{
    PyObject *fn;
    int index, coroutine;
    if (!PyArg_ParseTuple(args, "Oip", &fn, &index, &coroutine)) {
        return NULL;
    }
    if (index < 0 || index >= NSECTIONS) {
        PyErr_Format(PyExc_ValueError, "section index must be in [0, %d)", NSECTIONS);
        return NULL;
    }
    Section *self = PyObject_New(Section, &SectionType);
    if (self == NULL) {
        return NULL;
    }
    self->fn = Py_NewRef(fn);
    self->index = index;
    self->coroutine = coroutine;
    self->vectorcall = (vectorcallfunc)section_vectorcall;
    return (PyObject *)self;
}

static PyMethodDef module_methods[] = {
    {"wrap", wrap, METH_VARARGS, "wrap(fn, index, coroutine): fn called through section_<index+10>."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_sections", NULL, -1, module_methods,
};

PyMODINIT_FUNC
PyInit__sections(void)
{
    if (PyType_Ready(&SectionType) < 0 || PyType_Ready(&AwaitType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m != NULL) {
        PyModule_AddIntConstant(m, "SECTIONS", NSECTIONS);
    }
    return m;
}
