/*
 * The inner loops of _fhog.c, compiled twice (for AVX2 + FMA and for the baseline) and
 * chosen at import by what the CPU has.  KERNEL(name) gives each copy its own names.
 */
static const float *KERNEL(gathered_row)(Gathered *g, const Grey *in, long row, long keep,
                                         const int *left, int simd_end) {
    for (int i = 0; i < 2; ++i)
        if (g->row[i] == row) return g->pixels[i];
    const int slot = g->row[0] == keep ? 1 : 0;
    const uint8_t *src = in->px + (size_t)row * in->nc;
    float *dst = g->pixels[slot];
    for (int c = 0; c < simd_end; ++c) {
        dst[c] = src[left[c]];
        dst[simd_end + c] = src[left[c] + 1];
    }
    g->row[slot] = row;
    return dst;
}

/* dlib's resize_image(grey, grey, interpolate_bilinear): columns stepped four lanes at a
 * time in float (the same for every row, so worked out once), then the right edge pixel
 * by pixel in double; rounding to the nearest byte there, truncating at the edge.
 * Returns 0 when out of memory. */
static int KERNEL(resize_bilinear)(const Grey *in, Grey *out) {
    const double x_scale = (in->nc - 1) / (double)(out->nc - 1 > 1 ? out->nc - 1 : 1);
    const double y_scale = (in->nr - 1) / (double)(out->nr - 1 > 1 ? out->nr - 1 : 1);
    int *left = (int *)malloc(sizeof(int) * ((size_t)out->nc + 4));
    float *frac = (float *)malloc(sizeof(float) * ((size_t)out->nc + 4));
    float *pixels = (float *)malloc(sizeof(float) * 4 * ((size_t)out->nc + 4));
    if (!left || !frac || !pixels) {
        free(left), free(frac), free(pixels);
        return 0;
    }
    int simd_end = 0;
    {
        const float step = (float)(4 * x_scale);
        const double x = -4 * x_scale;
        float lane[4];
        for (int i = 0; i < 4; ++i) lane[i] = (float)(x + i * x_scale);
        for (;; simd_end += 4) {
            int lefts[4];
            for (int i = 0; i < 4; ++i) {
                lane[i] += step;
                lefts[i] = (int)lane[i];
            }
            if (lefts[3] + 1 >= in->nc || simd_end + 4 > out->nc + 4) break;
            for (int i = 0; i < 4; ++i) {
                left[simd_end + i] = lefts[i];
                frac[simd_end + i] = lane[i] - (float)lefts[i];
            }
        }
    }
    Gathered gathered = {{-1, -1}, {pixels, pixels + 2 * ((size_t)out->nc + 4)}};
    double y = -y_scale;
    for (int r = 0; r < out->nr; ++r) {
        y += y_scale;
        const long top = (long)floor(y);
        const long bottom = top + 1 < in->nr - 1 ? top + 1 : in->nr - 1;
        const double tb_frac = y - top;
        const float *t = KERNEL(gathered_row)(&gathered, in, top, bottom, left, simd_end);
        const float *b = KERNEL(gathered_row)(&gathered, in, bottom, top, left, simd_end);
        uint8_t *restrict dst = out->px + (size_t)r * out->nc;
        const float tb = (float)tb_frac, inv_tb = (float)(1 - tb_frac);
        for (int c = 0; c < simd_end; ++c) {
            const float inv_lr = 1 - frac[c];
            const float tlf = inv_tb * inv_lr, trf = inv_tb * frac[c];
            const float blf = tb * inv_lr, brf = tb * frac[c];
            float value = tlf * t[c] + trf * t[simd_end + c];
            value = value + blf * b[c];
            value = value + brf * b[simd_end + c];
            dst[c] = (uint8_t)(int)(value + 0.5f);
        }
        const uint8_t *row_t = in->px + (size_t)top * in->nc;
        const uint8_t *row_b = in->px + (size_t)bottom * in->nc;
        double x = -x_scale + simd_end * x_scale;
        for (int c = simd_end; c < out->nc; ++c) {
            x += x_scale;
            const long l = (long)floor(x);
            const long right = l + 1 < in->nc - 1 ? l + 1 : in->nc - 1;
            const float lr_frac = (float)(x - l);
            const float value = (float)((1 - tb_frac) * ((1 - lr_frac) * row_t[l] + lr_frac * row_t[right]) +
                                        tb_frac * ((1 - lr_frac) * row_b[l] + lr_frac * row_b[right]));
            dst[c] = value < 0 ? 0 : value > 255 ? 255 : (uint8_t)value; /* dlib truncates here */
        }
    }
    free(left), free(frac), free(pixels);
    return 1;
}

/* One row of pixels: gradient length and orientation bin (0..17) for x in [1, visible_nc),
 * in dlib's float arithmetic: the largest of 18 dot products, compared in dlib's order.
 * One direction at a time across the row (gx, gy, best: scratch rows), which the compiler
 * vectorises; a loop over directions inside the pixel loop it does not. */
static void KERNEL(gradient_row)(const Grey *img, int y, int visible_nc, float *restrict length,
                                 int *restrict bin, float *restrict gx, float *restrict gy,
                                 float *restrict best) {
    const uint8_t *mid = img->px + (size_t)y * img->nc;
    const uint8_t *up = mid - img->nc, *down = mid + img->nc;
    int start = 1;
#ifdef KERNEL_AVX2
    /* eight pixels at a time with the orientation search in registers, as dlib's simd8f */
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (; start + 8 <= visible_nc; start += 8) {
#define BYTES(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
        const __m256 dx = _mm256_cvtepi32_ps(_mm256_sub_epi32(BYTES(mid + start + 1), BYTES(mid + start - 1)));
        const __m256 dy = _mm256_cvtepi32_ps(_mm256_sub_epi32(BYTES(down + start), BYTES(up + start)));
#undef BYTES
        __m256 top = _mm256_setzero_ps(), top_o = _mm256_setzero_ps();
        for (int o = 0; o < 9; ++o) {
            const __m256 dot = _mm256_add_ps(_mm256_mul_ps(dx, _mm256_set1_ps(DIR_X[o])),
                                             _mm256_mul_ps(dy, _mm256_set1_ps(DIR_Y[o])));
            __m256 above = _mm256_cmp_ps(dot, top, _CMP_GT_OQ);
            top = _mm256_blendv_ps(top, dot, above);
            top_o = _mm256_blendv_ps(top_o, _mm256_set1_ps((float)o), above);
            const __m256 negated = _mm256_xor_ps(dot, sign);
            above = _mm256_cmp_ps(negated, top, _CMP_GT_OQ);
            top = _mm256_blendv_ps(top, negated, above);
            top_o = _mm256_blendv_ps(top_o, _mm256_set1_ps((float)(o + 9)), above);
        }
        _mm256_storeu_ps(length + start,
                         _mm256_sqrt_ps(_mm256_add_ps(_mm256_mul_ps(dx, dx), _mm256_mul_ps(dy, dy))));
        _mm256_storeu_si256((__m256i *)(bin + start), _mm256_cvtps_epi32(top_o));
    }
#endif
    for (int x = start; x < visible_nc; ++x) {
        gx[x] = (float)((int)mid[x + 1] - (int)mid[x - 1]);
        gy[x] = (float)((int)down[x] - (int)up[x]);
        length[x] = sqrtf(gx[x] * gx[x] + gy[x] * gy[x]);
        best[x] = 0;
        bin[x] = 0;
    }
    for (int o = 0; o < 9; ++o) {
        const float dx = DIR_X[o], dy = DIR_Y[o];
        for (int x = start; x < visible_nc; ++x) {
            const float dot = gx[x] * dx + gy[x] * dy;
            const int forward = dot > best[x];
            best[x] = forward ? dot : best[x];
            bin[x] = forward ? o : bin[x];
            const int backward = -dot > best[x];
            best[x] = backward ? -dot : best[x];
            bin[x] = backward ? o + 9 : bin[x];
        }
    }
}

/* Votes of one row of pixels into the cell histograms, bilinear in x and y.  The x weights
 * (column_cell, column_frac: see column_weights) are the same for every row. */
static void KERNEL(vote_row)(float *restrict hist, int hist_nc, int cell, int y, int visible_nc,
                             const float *restrict length, const int *restrict bin,
                             const int *restrict column_cell, const float *restrict column_frac) {
    const float yp = (float)((y + 0.5) / (float)cell - 0.5);
    const int iyp = (int)floorf(yp);
    const float vy0 = yp - (float)iyp;
    const float vy1 = (float)(1.0 - vy0);
    float *top = hist + (size_t)(iyp + 1) * hist_nc * BINS;
    float *below = top + (size_t)hist_nc * BINS;
    const int simd_end = simd_columns_end(visible_nc);
    int x = 1;
    for (; x < simd_end; ++x) { /* dlib's eight-wide loop: weight times length, then by vy */
        const float vx0 = column_frac[x] * length[x];
        const float vx1 = (1.0f - column_frac[x]) * length[x];
        float *t = top + column_cell[x] * BINS + bin[x], *b = below + column_cell[x] * BINS + bin[x];
        t[0] += vy1 * vx1;
        b[0] += vy0 * vx1;
        t[BINS] += vy1 * vx0;
        b[BINS] += vy0 * vx0;
    }
    for (; x < visible_nc; ++x) { /* dlib's scalar tail: vy times weight, then length */
        const float vx0 = column_frac[x];
        const float vx1 = (float)(1.0 - vx0);
        const float v = length[x];
        float *t = top + column_cell[x] * BINS + bin[x], *b = below + column_cell[x] * BINS + bin[x];
        t[0] += vy1 * vx1 * v;
        b[0] += vy0 * vx1 * v;
        t[BINS] += vy1 * vx0 * v;
        b[BINS] += vy0 * vx0 * v;
    }
}

/* One output row of a filter of `taps` taps: out[c] = sum_k w[k] * src[k][c], with the
 * taps' rows given by src(k).  Kept in registers across the taps; with the common 10 taps
 * known at compile time the compiler unrolls them and vectorises across c. */
#define FILTER_ROW(taps, first_col, last_col, out, src, w, store)                 \
    for (int c = (first_col); c < (last_col); ++c) {                            \
        float sum = 0;                                                          \
        for (int k = 0; k < (taps); ++k) sum += (w)[k] * src(k, c);             \
        store((out)[c], sum);                                                   \
    }
#define SET(dst, v) ((dst) = (v))
#define ADD(dst, v) ((dst) += (v))

/* dlib's float_spatially_filter_image_separable: the row filter across every row into
 * scratch, then the column filter down, added to score (or written, for the first). */
__attribute__((optimize("fp-contract=fast")))
static void KERNEL(filter_separable)(const float *restrict plane, int nr, int nc, const float *restrict row,
                                     int row_len, const float *restrict col, int col_len,
                                     float *restrict scratch, float *restrict score, int first) {
    const int first_row = col_len / 2, first_col = row_len / 2;
    const int last_row = nr - (col_len - 1) / 2, last_col = nc - (row_len - 1) / 2;
    for (int r = 0; r < nr; ++r) {
        const float *src = plane + (size_t)r * nc - first_col;
        float *dst = scratch + (size_t)r * nc;
#define ACROSS(k, c) src[(c) + (k)]
        if (row_len == 10) {
            FILTER_ROW(10, first_col, last_col, dst, ACROSS, row, SET)
        } else {
            FILTER_ROW(row_len, first_col, last_col, dst, ACROSS, row, SET)
        }
#undef ACROSS
    }
    for (int r = first_row; r < last_row; ++r) {
        const float *top = scratch + (size_t)(r - first_row) * nc;
        float *dst = score + (size_t)r * nc;
#define DOWN(k, c) top[(size_t)(k) * nc + (c)]
        if (col_len == 10 && first) {
            FILTER_ROW(10, first_col, last_col, dst, DOWN, col, SET)
        } else if (col_len == 10) {
            FILTER_ROW(10, first_col, last_col, dst, DOWN, col, ADD)
        } else if (first) {
            FILTER_ROW(col_len, first_col, last_col, dst, DOWN, col, SET)
        } else {
            FILTER_ROW(col_len, first_col, last_col, dst, DOWN, col, ADD)
        }
#undef DOWN
    }
}
