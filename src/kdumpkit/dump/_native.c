/*
 * kdumpkit.dump._native — the kdump writer's per-page loop in C.
 *
 * One call per window of pages does what makedumpfile's write_kdump_pages()
 * does per page: the zero-page check, compression (the same libraries at
 * the same levels, so the same bytes), the "keep it raw unless strictly
 * smaller" rule, and the packing of the 24-byte page_desc records.  The
 * whole loop runs with the GIL released, so a thread pool really uses every
 * core.  The pure-Python path in kdump.py produces identical bytes; this is
 * only its fast form (tests/unit/test_native_core.py compares the two).
 *
 * Codecs are compiled in when their headers were found at build time
 * (setup.py defines KDK_HAVE_LZO / KDK_HAVE_ZSTD); zlib is always there.
 * CODECS lists the page_desc flags this build can produce.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#ifdef KDK_HAVE_LZO
#include <lzo/lzo1x.h>
#endif
#ifdef KDK_HAVE_ZSTD
#include <zstd.h>
#endif

/* page_desc.flags values (makedumpfile's DUMP_DH_COMPRESSED_*) */
#define KDK_RAW 0x00
#define KDK_ZLIB 0x01
#define KDK_LZO 0x02
#define KDK_ZSTD 0x20

#define DESC_SIZE 24 /* struct page_desc: i64 offset, u32 size, u32 flags, u64 page_flags */

static int
page_is_zero(const unsigned char *p, size_t n)
{
    /* OR whole 64-byte blocks, test once per block: the common non-zero page exits in the first. */
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8], acc;
        memcpy(w, p + i, sizeof w);
        acc = w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7];
        if (acc)
            return 0;
    }
    for (; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static void
put_u32(unsigned char *p, uint32_t v, int big)
{
    for (int i = 0; i < 4; i++)
        p[big ? 3 - i : i] = (unsigned char)(v >> (8 * i));
}

static void
put_u64(unsigned char *p, uint64_t v, int big)
{
    for (int i = 0; i < 8; i++)
        p[big ? 7 - i : i] = (unsigned char)(v >> (8 * i));
}

static uint64_t
get_u64(const unsigned char *p, int big)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[big ? 7 - i : i] << (8 * i);
    return v;
}

static void
put_desc(unsigned char *d, int64_t offset, uint32_t size, uint32_t flags, int big)
{
    put_u64(d, (uint64_t)offset, big);
    put_u32(d + 8, size, big);
    put_u32(d + 12, flags, big);
    put_u64(d + 16, 0, big); /* page_flags: makedumpfile writes 0 */
}

/* One codec's state for a whole window (allocated once, reused per page as makedumpfile does). */
typedef struct {
    int codec;
    int level;
    size_t bound;
    z_stream zs;
    int zs_ready;
#ifdef KDK_HAVE_LZO
    void *lzo_wrk;
#endif
#ifdef KDK_HAVE_ZSTD
    ZSTD_CCtx *zctx;
#endif
} Comp;

static int
comp_open(Comp *c, int codec, int level, size_t ps)
{
    memset(c, 0, sizeof *c);
    c->codec = codec;
    c->level = level;
    c->bound = ps;
    switch (codec) {
    case KDK_RAW:
        return 0;
    case KDK_ZLIB:
        c->bound = compressBound((uLong)ps);
        if (deflateInit(&c->zs, level) != Z_OK)
            return -1;
        c->zs_ready = 1;
        return 0;
#ifdef KDK_HAVE_LZO
    case KDK_LZO:
        c->bound = ps + ps / 16 + 64 + 3; /* lzo1x worst case, as makedumpfile sizes it */
        c->lzo_wrk = malloc(LZO1X_1_MEM_COMPRESS);
        return c->lzo_wrk ? 0 : -1;
#endif
#ifdef KDK_HAVE_ZSTD
    case KDK_ZSTD:
        c->bound = ZSTD_compressBound(ps);
        c->zctx = ZSTD_createCCtx();
        return c->zctx ? 0 : -1;
#endif
    default:
        return -2;
    }
}

static void
comp_close(Comp *c)
{
    if (c->zs_ready)
        deflateEnd(&c->zs);
#ifdef KDK_HAVE_LZO
    free(c->lzo_wrk);
#endif
#ifdef KDK_HAVE_ZSTD
    ZSTD_freeCCtx(c->zctx);
#endif
}

/* Compress one page into out (c->bound bytes); the compressed size, or 0 when it failed. */
static size_t
comp_page(Comp *c, const unsigned char *page, size_t ps, unsigned char *out)
{
    switch (c->codec) {
    case KDK_ZLIB: {
        /* = compress2(out, .., page, ps, level): deflateInit's defaults, one Z_FINISH, then reset */
        size_t n = 0;
        c->zs.next_in = (Bytef *)page;
        c->zs.avail_in = (uInt)ps;
        c->zs.next_out = out;
        c->zs.avail_out = (uInt)c->bound;
        if (deflate(&c->zs, Z_FINISH) == Z_STREAM_END)
            n = c->zs.total_out;
        deflateReset(&c->zs);
        return n;
    }
#ifdef KDK_HAVE_LZO
    case KDK_LZO: {
        lzo_uint n = 0;
        if (lzo1x_1_compress(page, ps, out, &n, c->lzo_wrk) != LZO_E_OK)
            return 0;
        return n;
    }
#endif
#ifdef KDK_HAVE_ZSTD
    case KDK_ZSTD: {
        size_t n = ZSTD_compressCCtx(c->zctx, out, c->bound, page, ps, c->level);
        return ZSTD_isError(n) ? 0 : n;
    }
#endif
    default:
        return 0;
    }
}

PyDoc_STRVAR(encode_doc,
"encode(codec, level, page_size, data, share_zero, base, zero_off, big_endian) -> (blob, descs, zero_pages)\n\n"
"Encode a window of whole pages as makedumpfile writes them.  codec is a page_desc flag (0 = raw).\n"
"blob: the page data to write at file offset base; descs: one packed page_desc per page (offsets\n"
"base + position in blob, or zero_off for an all-zero page when share_zero, whose data is not in\n"
"blob); zero_pages: how many pages were all zero.  Runs without the GIL.");

static PyObject *
encode(PyObject *self, PyObject *args)
{
    int codec, level, share_zero, big;
    Py_ssize_t ps;
    long long base, zero_off;
    Py_buffer in;
    (void)self;
    if (!PyArg_ParseTuple(args, "iiny*pLLp:encode", &codec, &level, &ps, &in, &share_zero, &base, &zero_off, &big))
        return NULL;
    if (ps <= 0 || in.len % ps != 0 || ps > (1 << 24)) {
        PyBuffer_Release(&in);
        return PyErr_Format(PyExc_ValueError, "data of %zd bytes is not whole pages of %zd", in.len, ps);
    }
    Py_ssize_t n = in.len / ps;
    PyObject *blob = PyBytes_FromStringAndSize(NULL, in.len);
    PyObject *descs = PyBytes_FromStringAndSize(NULL, n * DESC_SIZE);
    unsigned char *scratch = NULL;
    Comp c;
    int rc = comp_open(&c, codec, level, (size_t)ps);
    if (rc == -2) {
        PyErr_Format(PyExc_ValueError, "codec flag %#x is not compiled into this build", codec);
        goto fail;
    }
    if (rc == 0 && c.bound > (size_t)ps)
        scratch = malloc(c.bound);
    if (rc != 0 || !blob || !descs || (c.bound > (size_t)ps && !scratch)) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        goto fail;
    }

    const unsigned char *src = in.buf;
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(blob);
    unsigned char *d = (unsigned char *)PyBytes_AS_STRING(descs);
    size_t pos = 0;
    Py_ssize_t zeros = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++, d += DESC_SIZE) {
        const unsigned char *page = src + i * ps;
        if (page_is_zero(page, (size_t)ps)) {
            zeros++;
            if (share_zero) {
                put_desc(d, zero_off, (uint32_t)ps, KDK_RAW, big);
                continue;
            }
        }
        size_t size = 0;
        if (codec != KDK_RAW) {
            /* compress straight into the blob when a worst case fits (only the last pages may not) */
            unsigned char *out = (size_t)in.len - pos >= c.bound ? dst + pos : scratch;
            size = comp_page(&c, page, (size_t)ps, out);
            if (size > 0 && size < (size_t)ps) {
                if (out != dst + pos)
                    memcpy(dst + pos, out, size);
            } else {
                size = 0; /* not strictly smaller: stored raw, as makedumpfile does */
            }
        }
        if (size == 0) {
            memcpy(dst + pos, page, (size_t)ps);
            put_desc(d, base + (int64_t)pos, (uint32_t)ps, KDK_RAW, big);
            pos += (size_t)ps;
        } else {
            put_desc(d, base + (int64_t)pos, (uint32_t)size, (uint32_t)codec, big);
            pos += size;
        }
    }
    Py_END_ALLOW_THREADS
    comp_close(&c);
    free(scratch);
    PyBuffer_Release(&in);
    if (_PyBytes_Resize(&blob, (Py_ssize_t)pos) < 0) {
        Py_DECREF(descs);
        return NULL;
    }
    return Py_BuildValue("(NNn)", blob, descs, zeros);

fail:
    if (rc != -2)
        comp_close(&c);
    free(scratch);
    PyBuffer_Release(&in);
    Py_XDECREF(blob);
    Py_XDECREF(descs);
    return NULL;
}

PyDoc_STRVAR(rebase_doc,
"rebase(descs, delta, zero_off, big_endian) -> descs\n\n"
"Descriptors encoded at base 0 with zero_off -1 (the writer's file position was not known yet),\n"
"moved to their final place: offset -1 becomes zero_off, every other offset gains delta.");

static PyObject *
rebase(PyObject *self, PyObject *args)
{
    Py_buffer in;
    long long delta, zero_off;
    int big;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*LLp:rebase", &in, &delta, &zero_off, &big))
        return NULL;
    if (in.len % DESC_SIZE != 0) {
        PyBuffer_Release(&in);
        return PyErr_Format(PyExc_ValueError, "%zd bytes is not whole page_desc records", in.len);
    }
    PyObject *out = PyBytes_FromStringAndSize(in.buf, in.len);
    PyBuffer_Release(&in);
    if (!out)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < PyBytes_GET_SIZE(out); i += DESC_SIZE) {
        int64_t off = (int64_t)get_u64(p + i, big);
        put_u64(p + i, (uint64_t)(off == -1 ? zero_off : off + delta), big);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"encode", encode, METH_VARARGS, encode_doc},
    {"rebase", rebase, METH_VARARGS, rebase_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The kdump writer's per-page loop (zero check, compression, page_desc) in C.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
#ifdef KDK_HAVE_LZO
    if (lzo_init() != LZO_E_OK) {
        PyErr_SetString(PyExc_ImportError, "lzo_init failed");
        return NULL;
    }
#endif
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    PyObject *codecs = Py_BuildValue("(i"
#ifdef KDK_HAVE_LZO
                                     "i"
#endif
#ifdef KDK_HAVE_ZSTD
                                     "i"
#endif
                                     "i)",
                                     KDK_RAW,
#ifdef KDK_HAVE_LZO
                                     KDK_LZO,
#endif
#ifdef KDK_HAVE_ZSTD
                                     KDK_ZSTD,
#endif
                                     KDK_ZLIB);
    if (PyModule_AddObject(m, "CODECS", codecs) < 0) {
        Py_XDECREF(codecs);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddStringConstant(m, "ZLIB_VERSION", zlibVersion());
    return m;
}
