/*
 * Native scanning for dlib's HOG face detector (scanpixd.models.hog drives it).
 *
 * dlib's frontal face detector spends ~280 ms of CPU on a 1024 px picture doubled to 2048 px
 * (the faces stage's default), in its 305 rank-1 filters, FHOG extraction and pyramid
 * resizing.  This file does the same arithmetic in dlib's order: bilinear resizing as dlib's
 * resize_image does it for 8-bit grey images, FHOG features as impl_extract_fhog_features
 * computes them (Felzenszwalb et al., 31 planes), and each detector's rank-1 filters summed
 * into its score plane.  It answers every window whose score reaches its detector's
 * threshold; mapping windows to rectangles and non-maximum suppression are in Python, where
 * they are cheap.
 *
 * The speed (55 to 60 % of dlib's CPU) comes from layout, not from different maths: the
 * 10-tap filters held in registers and vectorised across columns, the resize's column
 * weights worked out once and each input row gathered once, the orientation search in
 * registers, the votes' column weights computed once per level.  The inner loops are built
 * for AVX2 + FMA and for the baseline, chosen at import by what the CPU has.
 *
 * The FHOG code is derived from dlib's fhog.h, which derives from the voc-release features.cc
 * by Ross Girshick, Pedro Felzenszwalb and Deva Ramanan (MIT licence; dlib: Boost licence).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PLANES 31
#define BINS 18

/* -- images ---------------------------------------------------------------------------- */

typedef struct {
    int nr, nc;
    uint8_t *px;
} Grey;

typedef struct {
    int nr, nc;  /* every plane's size */
    float *data; /* PLANES planes of nr * nc */
} Fhog;

/* 16 bytes of slack past the last row: at extreme enlargements the resize's four-lane loop,
 * like dlib's, may step up to 3 bytes past a row's end before its bound check stops it. */
static int grey_alloc(Grey *img, int nr, int nc) {
    img->nr = nr;
    img->nc = nc;
    img->px = (uint8_t *)malloc((size_t)nr * (size_t)nc + 16);
    return img->px != NULL;
}

/* -- the kernels, for this CPU --------------------------------------------------------- */

static const float DIR_X[9] = {1.0000f, 0.9397f, 0.7660f, 0.500f, 0.1736f, -0.1736f, -0.5000f, -0.7660f, -0.9397f};
static const float DIR_Y[9] = {0.0000f, 0.3420f, 0.6428f, 0.8660f, 0.9848f, 0.9848f, 0.8660f, 0.6428f, 0.3420f};

/* One input row's pixels at each output column's left and right neighbours, as floats:
 * kept for the two rows in use, since each input row serves several output rows. */
typedef struct {
    long row[2];
    float *pixels[2]; /* simd_end lefts, then simd_end rights */
} Gathered;

/* Where dlib's eight-wide loop over a row of pixels, from x = 1, stops. */
static inline int simd_columns_end(int visible_nc) {
    int x = 1;
    while (x < visible_nc - 7) x += 8;
    return x;
}

#define KERNEL(name) name##_baseline
#include "_fhog_kernels.h"
#undef KERNEL

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_AVX2_KERNELS 1
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#define KERNEL(name) name##_avx2
#define KERNEL_AVX2 1
#include "_fhog_kernels.h"
#undef KERNEL_AVX2
#undef KERNEL
#pragma GCC pop_options
#endif

typedef struct {
    const char *name;
    int (*resize_bilinear)(const Grey *, Grey *);
    void (*gradient_row)(const Grey *, int, int, float *, int *, float *, float *, float *);
    void (*vote_row)(float *, int, int, int, int, const float *, const int *, const int *, const float *);
    void (*filter_separable)(const float *, int, int, const float *, int, const float *, int, float *,
                             float *, int);
} Kernels;

static Kernels kernels;

static const Kernels baseline = {"baseline", resize_bilinear_baseline, gradient_row_baseline,
                                 vote_row_baseline, filter_separable_baseline};
#ifdef HAVE_AVX2_KERNELS
static const Kernels avx2 = {"avx2+fma", resize_bilinear_avx2, gradient_row_avx2, vote_row_avx2,
                             filter_separable_avx2};
#endif

/* The fastest kernels this CPU runs, or the baseline ones when `baseline` is set. */
static void choose_kernels(int baseline_only) {
    kernels = baseline;
#ifdef HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    if (!baseline_only && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) kernels = avx2;
#endif
}

/* -- FHOG ------------------------------------------------------------------------------ */

/* Four lanes summed as dlib's simd4f sum() does with SSE3/SSE4.1: pairs first. */
static inline float lane_sum(const float v[4]) { return (v[0] + v[1]) + (v[2] + v[3]); }

static inline float min_float(float a, float b) { return a < b ? a : b; }

/* The 31 features of every cell from the histograms and their block energies. */
static void cell_features(const float *hist, int hist_nc, const float *norm, int cells_nc,
                          int hog_nr, int hog_nc, int pad_r, int pad_c, Fhog *out) {
    const size_t plane = (size_t)out->nr * out->nc;
    const float eps = 0.0001f;
#define NORM(r, c) norm[(size_t)(r) * cells_nc + (c)]
    for (int y = 0; y < hog_nr; ++y) {
        const int yy = y + (pad_r - 1) / 2;
        for (int x = 0; x < hog_nc; ++x) {
            const int xx = x + (pad_c - 1) / 2;
            const float z1[4] = {NORM(y + 1, x + 1), NORM(y, x + 1), NORM(y + 1, x), NORM(y, x)};
            const float z2[4] = {NORM(y + 1, x + 2), NORM(y, x + 2), NORM(y + 1, x + 1), NORM(y, x + 1)};
            const float z3[4] = {NORM(y + 2, x + 1), NORM(y + 1, x + 1), NORM(y + 2, x), NORM(y + 1, x)};
            const float z4[4] = {NORM(y + 2, x + 2), NORM(y + 1, x + 2), NORM(y + 2, x + 1), NORM(y + 1, x + 1)};
            float nn[4], n[4], t[4] = {0, 0, 0, 0};
            for (int i = 0; i < 4; ++i) {
                nn[i] = 0.2f * sqrtf(z1[i] + z2[i] + z3[i] + z4[i] + eps);
                n[i] = 0.1f / nn[i];
            }
            const float *h = hist + ((size_t)(y + 2) * hist_nc + (x + 2)) * BINS;
            float *dst = out->data + (size_t)yy * out->nc + xx;
            for (int o = 0; o < BINS; o += 3) {
                float h0[4], h1[4], h2[4];
                for (int i = 0; i < 4; ++i) {
                    h0[i] = min_float(h[o], nn[i]) * n[i];
                    h1[i] = min_float(h[o + 1], nn[i]) * n[i];
                    h2[i] = min_float(h[o + 2], nn[i]) * n[i];
                    t[i] += (h0[i] + h1[i]) + h2[i];
                }
                dst[o * plane] = lane_sum(h0);
                dst[(o + 1) * plane] = lane_sum(h1);
                dst[(o + 2) * plane] = lane_sum(h2);
            }
            for (int o = 0; o < 9; ++o) {
                const float both = h[o] + h[o + 9];
                float s[4];
                for (int i = 0; i < 4; ++i) s[i] = min_float(both, nn[i]) * n[i];
                dst[(o + 18) * plane] = lane_sum(s);
            }
            for (int i = 0; i < 4; ++i) dst[(27 + i) * plane] = t[i] * (float)(2 * 0.2357);
        }
    }
#undef NORM
}

/* The x half of each pixel's bilinear vote: the left cell's histogram column and the
 * fraction going right, as dlib's eight-wide loop and its scalar tail compute them. */
static void column_weights(int cell, int visible_nc, int *column_cell, float *column_frac) {
    const int simd_end = simd_columns_end(visible_nc);
    for (int x = 1; x < visible_nc; ++x) {
        if (x < simd_end) {
            const float xp = ((float)x + 0.5f) / (float)cell + 0.5f;
            column_cell[x] = (int)xp;
            column_frac[x] = xp - (float)column_cell[x];
        } else {
            const float xp = (float)((x + 0.5) / (double)cell - 0.5);
            const int ixp = (int)floorf(xp);
            column_cell[x] = ixp + 1;
            column_frac[x] = xp - (float)ixp;
        }
    }
}

/* dlib's impl_extract_fhog_features for a grey image and filter padding (pad_r, pad_c):
 * planes of (cells - 2 + pad - 1) with a zero border.  Returns 0 when out of memory; an
 * image too small for features gives nr = nc = 0. */
static int extract_fhog(const Grey *img, int cell, int pad_r, int pad_c, Fhog *out) {
    out->nr = out->nc = 0;
    out->data = NULL;
    const int cells_nr = (int)((float)img->nr / (float)cell + 0.5f);
    const int cells_nc = (int)((float)img->nc / (float)cell + 0.5f);
    const int hog_nr = cells_nr - 2, hog_nc = cells_nc - 2;
    if (cells_nr <= 0 || cells_nc <= 0 || hog_nr <= 0 || hog_nc <= 0) return 1;

    const int hist_nc = cells_nc + 2;
    float *hist = (float *)calloc((size_t)(cells_nr + 2) * hist_nc * BINS, sizeof(float));
    float *norm = (float *)calloc((size_t)cells_nr * cells_nc, sizeof(float));
    float *length = (float *)malloc(sizeof(float) * 5 * ((size_t)img->nc + 8));
    int *bin = (int *)malloc(sizeof(int) * 2 * ((size_t)img->nc + 8));
    const int nr = hog_nr + pad_r - 1, nc = hog_nc + pad_c - 1;
    float *data = (float *)calloc((size_t)PLANES * nr * nc, sizeof(float));
    int ok = hist && norm && length && bin && data;
    if (ok) {
        const int visible_nr = (cells_nr * cell < img->nr ? cells_nr * cell : img->nr) - 1;
        const int visible_nc = (cells_nc * cell < img->nc ? cells_nc * cell : img->nc) - 1;
        const size_t row = (size_t)img->nc + 8;
        float *gx = length + row, *gy = gx + row, *best = gy + row, *column_frac = best + row;
        int *column_cell = bin + row;
        column_weights(cell, visible_nc, column_cell, column_frac);
        for (int y = 1; y < visible_nr; ++y) {
            kernels.gradient_row(img, y, visible_nc, length, bin, gx, gy, best);
            kernels.vote_row(hist, hist_nc, cell, y, visible_nc, length, bin, column_cell, column_frac);
        }
        for (int r = 0; r < cells_nr; ++r) {
            for (int c = 0; c < cells_nc; ++c) {
                const float *h = hist + ((size_t)(r + 1) * hist_nc + (c + 1)) * BINS;
                float energy = 0;
                for (int o = 0; o < 9; ++o) energy += (h[o] + h[o + 9]) * (h[o] + h[o + 9]);
                norm[(size_t)r * cells_nc + c] = energy;
            }
        }
        out->nr = nr, out->nc = nc, out->data = data;
        cell_features(hist, hist_nc, norm, cells_nc, hog_nr, hog_nc, pad_r, pad_c, out);
    } else {
        free(data);
    }
    free(hist), free(norm), free(length), free(bin);
    return ok;
}

/* -- filtering ------------------------------------------------------------------------- */

/* -- the scan -------------------------------------------------------------------------- */

typedef struct {
    int detectors, filter_nr, filter_nc;
    const float *bank;      /* per detector, per plane: count pairs of (row, col) filters */
    const int32_t *counts;  /* detectors * PLANES */
    const double *biases;   /* per detector: a window counts when its score >= bias + adjust */
    double adjust;
} Bank;

typedef struct {
    double confidence;
    int detector, level, row, col;
} Hit;

typedef struct {
    Hit *items;
    size_t size, capacity;
} Hits;

static int hits_add(Hits *hits, Hit hit) {
    if (hits->size == hits->capacity) {
        const size_t capacity = hits->capacity ? hits->capacity * 2 : 64;
        Hit *items = (Hit *)realloc(hits->items, capacity * sizeof(Hit));
        if (!items) return 0;
        hits->items = items, hits->capacity = capacity;
    }
    hits->items[hits->size++] = hit;
    return 1;
}

/* Every detector's windows over one level's features whose score reaches its threshold. */
static int scan_level(const Fhog *feats, const Bank *bank, int level, float *score, float *scratch,
                      Hits *hits) {
    const size_t plane = (size_t)feats->nr * feats->nc;
    const int first_row = bank->filter_nr / 2, first_col = bank->filter_nc / 2;
    const int last_row = feats->nr - (bank->filter_nr - 1) / 2;
    const int last_col = feats->nc - (bank->filter_nc - 1) / 2;
    const float *filter = bank->bank;
    for (int d = 0; d < bank->detectors; ++d) {
        int first = 1;
        for (int p = 0; p < PLANES; ++p) {
            for (int k = 0; k < bank->counts[d * PLANES + p]; ++k) {
                const float *row = filter, *col = filter + bank->filter_nc;
                filter += bank->filter_nc + bank->filter_nr;
                if (feats->nr < bank->filter_nr || feats->nc < bank->filter_nc) continue;
                kernels.filter_separable(feats->data + p * plane, feats->nr, feats->nc, row, bank->filter_nc,
                                 col, bank->filter_nr, scratch, score, first);
                first = 0;
            }
        }
        if (first) continue; /* no filters, or features too small: dlib finds nothing */
        const double bias = bank->biases[d], thresh = bias + bank->adjust;
        for (int r = first_row; r < last_row; ++r) {
            const float *line = score + (size_t)r * feats->nc;
            for (int c = first_col; c < last_col; ++c) {
                if (line[c] >= thresh) {
                    const Hit hit = {line[c] - bias, d, level, r, c};
                    if (!hits_add(hits, hit)) return 0;
                }
            }
        }
    }
    return 1;
}

static int scan_pyramid(Grey *img, int levels, int cell, const Bank *bank, Hits *hits) {
    int ok = 1;
    Grey level_img = *img, next = {0, 0, NULL};
    for (int l = 0; l < levels && ok; ++l) {
        if (l > 0) {
            if (!grey_alloc(&next, (int)((5L * level_img.nr) / 6), (int)((5L * level_img.nc) / 6))) {
                ok = 0;
                break;
            }
            if (next.nr > 0 && next.nc > 0 && !kernels.resize_bilinear(&level_img, &next)) {
                free(next.px);
                ok = 0;
                break;
            }
            if (level_img.px != img->px) free(level_img.px);
            level_img = next;
        }
        Fhog feats;
        if (!extract_fhog(&level_img, cell, bank->filter_nr, bank->filter_nc, &feats)) {
            ok = 0;
            break;
        }
        if (!feats.data) break; /* every later level is smaller still: nothing to find */
        const size_t plane = (size_t)feats.nr * feats.nc;
        float *score = (float *)calloc(plane, sizeof(float));
        float *scratch = (float *)calloc(plane, sizeof(float));
        ok = score && scratch && scan_level(&feats, bank, l, score, scratch, hits);
        free(score), free(scratch), free(feats.data);
    }
    if (level_img.px != img->px) free(level_img.px);
    return ok;
}

/* Limits on what scan() accepts: far beyond any detector or picture, small enough that no
 * size computed from them overflows. */
#define MAX_SIDE (1 << 16)
#define MAX_FILTER 64
#define MAX_CELL 64
#define MAX_DETECTORS 1024
#define MAX_UPSAMPLE 3

/* A C-contiguous buffer of exactly `bytes` bytes, copied (so aligned, and safe from other
 * threads changing it while the GIL is released).  NULL with an exception set otherwise. */
static void *copied_buffer(PyObject *obj, size_t bytes, const char *what) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if ((size_t)view.len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, expected %zu", what, view.len, bytes);
        PyBuffer_Release(&view);
        return NULL;
    }
    void *copy = malloc(bytes ? bytes : 1);
    if (copy)
        memcpy(copy, view.buf, bytes);
    else
        PyErr_NoMemory();
    PyBuffer_Release(&view);
    return copy;
}

/* dlib's pyramid_up with pyramid_down<2>: the size of rect_up of the image's rectangle. */
static void upsampled(int *nr, int *nc) {
    *nr = (int)lround((*nr - 1 + 0.75) * 2) + 1;
    *nc = (int)lround((*nc - 1 + 1.25) * 2) + 1;
}

/* The picture doubled `upsample` times as dlib's run() doubles it (rounded to bytes each
 * time), then its pyramid scanned.  Runs without the GIL. */
static int scan_upsampled(Grey source, int upsample, int levels, int cell, const Bank *bank, Hits *hits) {
    Grey current = source;
    int ok = 1;
    for (int i = 0; i < upsample && ok; ++i) {
        Grey bigger;
        int nr = current.nr, nc = current.nc;
        upsampled(&nr, &nc);
        ok = grey_alloc(&bigger, nr, nc) && kernels.resize_bilinear(&current, &bigger);
        if (current.px != source.px) free(current.px);
        current = bigger;
        if (!ok) free(bigger.px);
    }
    ok = ok && scan_pyramid(&current, levels, cell, bank, hits);
    if (ok && current.px != source.px) free(current.px);
    return ok;
}

PyDoc_STRVAR(scan_doc,
    "scan(image, nr, nc, upsample, levels, cell, detectors, filter_nr, filter_nc,\n"
    "     bank, counts, biases, adjust) -> list of (confidence, detector, level, row, col)\n\n"
    "image: nr*nc grey bytes, doubled `upsample` times (as dlib's run() does) and scanned over\n"
    "`levels` pyramid levels.  bank: float32 (row, col) filter pairs, per detector per plane;\n"
    "counts: int32 pairs per detector and plane; biases: float64 per detector.  A window is\n"
    "answered when its score reaches bias + adjust; its confidence is score - bias.");

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *image_obj, *bank_obj, *counts_obj, *biases_obj;
    int nr, nc, upsample, levels, cell, detectors, filter_nr, filter_nc;
    double adjust;
    if (!PyArg_ParseTuple(args, "OiiiiiiiiOOOd", &image_obj, &nr, &nc, &upsample, &levels, &cell,
                          &detectors, &filter_nr, &filter_nc, &bank_obj, &counts_obj, &biases_obj, &adjust))
        return NULL;
    if (nr <= 0 || nc <= 0 || nr > MAX_SIDE || nc > MAX_SIDE || upsample < 0 || upsample > MAX_UPSAMPLE ||
        levels < 0 || cell <= 0 || cell > MAX_CELL || detectors <= 0 || detectors > MAX_DETECTORS ||
        filter_nr <= 0 || filter_nr > MAX_FILTER || filter_nc <= 0 || filter_nc > MAX_FILTER ||
        !isfinite(adjust)) {
        PyErr_Format(PyExc_ValueError,
                     "out of range: sides 1..%d, upsample 0..%d, cell 1..%d, detectors 1..%d, filters "
                     "1..%d, levels >= 0, a finite adjust", MAX_SIDE, MAX_UPSAMPLE, MAX_CELL, MAX_DETECTORS,
                     MAX_FILTER);
        return NULL;
    }
    const size_t slots = (size_t)detectors * PLANES;
    int32_t *counts = (int32_t *)copied_buffer(counts_obj, slots * sizeof(int32_t), "counts");
    if (!counts) return NULL;
    size_t pairs = 0;
    for (size_t i = 0; i < slots; ++i) {
        if (counts[i] < 0 || counts[i] > (filter_nr < filter_nc ? filter_nr : filter_nc)) {
            free(counts);
            PyErr_SetString(PyExc_ValueError, "counts: each between 0 and the filter's smaller side");
            return NULL;
        }
        pairs += (size_t)counts[i];
    }
    float *filters = (float *)copied_buffer(bank_obj, pairs * (size_t)(filter_nr + filter_nc) * sizeof(float),
                                            "bank");
    double *biases = filters ? (double *)copied_buffer(biases_obj, (size_t)detectors * sizeof(double), "biases")
                             : NULL;
    Py_buffer image;
    int have_image = biases && PyObject_GetBuffer(image_obj, &image, PyBUF_C_CONTIGUOUS) == 0;
    if (have_image && image.len != (Py_ssize_t)nr * nc) {
        PyErr_Format(PyExc_ValueError, "image: %zd bytes, expected %d x %d", image.len, nr, nc);
        PyBuffer_Release(&image);
        have_image = 0;
    }
    if (!have_image) {
        free(counts), free(filters), free(biases);
        return NULL;
    }
    const Bank bank = {detectors, filter_nr, filter_nc, filters, counts, biases, adjust};
    Hits hits = {NULL, 0, 0};
    int ok;
    Py_BEGIN_ALLOW_THREADS
    const Grey source = {nr, nc, (uint8_t *)image.buf};
    ok = scan_upsampled(source, upsample, levels, cell, &bank, &hits);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&image);
    free(counts), free(filters), free(biases);
    if (!ok) {
        free(hits.items);
        return PyErr_NoMemory();
    }
    PyObject *result = PyList_New((Py_ssize_t)hits.size);
    for (size_t i = 0; result && i < hits.size; ++i) {
        const Hit *hit = &hits.items[i];
        PyObject *item = Py_BuildValue("(diiii)", hit->confidence, hit->detector, hit->level, hit->row,
                                       hit->col);
        if (!item) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, item);
    }
    free(hits.items);
    return result;
}

PyDoc_STRVAR(upsampled_size_doc,
    "upsampled_size(nr, nc, upsample) -> (nr, nc)\n\n"
    "The size scan() scans a picture of nr x nc at after `upsample` doublings.");

static PyObject *upsampled_size(PyObject *self, PyObject *args) {
    (void)self;
    int nr, nc, upsample;
    if (!PyArg_ParseTuple(args, "iii", &nr, &nc, &upsample)) return NULL;
    if (nr <= 0 || nc <= 0 || nr > MAX_SIDE || nc > MAX_SIDE || upsample < 0 || upsample > MAX_UPSAMPLE) {
        PyErr_Format(PyExc_ValueError, "out of range: sides 1..%d, upsample 0..%d", MAX_SIDE, MAX_UPSAMPLE);
        return NULL;
    }
    for (int i = 0; i < upsample; ++i) upsampled(&nr, &nc);
    return Py_BuildValue("(ii)", nr, nc);
}

PyDoc_STRVAR(set_kernels_doc,
    "set_kernels(baseline_only: bool) -> str\n\n"
    "Scan with the baseline inner loops only (True) or the fastest this CPU runs (False);\n"
    "answers the kernels now in use.  Scans must not be running.");

static PyObject *set_kernels(PyObject *self, PyObject *arg) {
    const int baseline_only = PyObject_IsTrue(arg);
    if (baseline_only < 0) return NULL;
    choose_kernels(baseline_only);
    if (PyModule_AddStringConstant(self, "KERNELS", kernels.name) < 0) return NULL;
    return PyUnicode_FromString(kernels.name);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"upsampled_size", upsampled_size, METH_VARARGS, upsampled_size_doc},
    {"set_kernels", set_kernels, METH_O, set_kernels_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "scanpixd.models._fhog",
    "Native FHOG pyramid scanning with dlib's detector arithmetic (see scanpixd.models.hog).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fhog(void) {
    choose_kernels(0);
    PyObject *mod = PyModule_Create(&module);
    if (mod && PyModule_AddStringConstant(mod, "KERNELS", kernels.name) < 0) Py_CLEAR(mod);
    return mod;
}
