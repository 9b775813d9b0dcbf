/* _ngramscorer_seq.c: a pooled text's feature sequences (see the pooling note in
 * _ngramscorer.h): each feature's bucket, weight and previous and next occurrence, built once
 * per text, and the branch-free sum of a range's distinct buckets, which every pooled span
 * asks twice. Part of the Scorer (see _ngramscorer.c, _ngramscorer_pool.c). */

#include "_ngramscorer.h"

#ifdef __SSE2__
#include <emmintrin.h>
#endif

void ngscorer_seq_free(Seq *q) {
    PyMem_Free(q->bucket);
    PyMem_Free(q->w);
    PyMem_Free(q->prev);
    PyMem_Free(q->slots);
    PyMem_Free(q->next);
    PyMem_Free(q->first);
    PyMem_Free(q->at);
}

int ngscorer_seq_reserve(Seq *q, Py_ssize_t len) {
    q->len = 0;
    if (len > q->cap) {
        GROW(q->bucket, len);
        GROW(q->w, len);
        GROW(q->prev, len);
        GROW(q->next, len);
        GROW(q->first, len);
        GROW(q->at, len);
        q->cap = len;
    }
    Py_ssize_t kcap = 64;
    while (kcap < 2 * len) kcap <<= 1;
    if (kcap > q->kcap) {
        GROW(q->slots, kcap);
        q->kcap = kcap;
    }
    q->kmask = (uint32_t)(kcap - 1);
    memset(q->slots, 0, (size_t)kcap * sizeof(Slot));
    return 0;
nomem:
    PyErr_NoMemory();
    return -1;
}

/* Each feature's weight, prev[] and next[] (q->bucket[0..len) filled in). */
void ngscorer_seq_index(Seq *q, const float *weights) {
    uint32_t mask = q->kmask;
    int32_t next_id = 0;
    int32_t *last = q->at; /* per id: its latest index so far */
    for (Py_ssize_t k = 0; k < q->len; k++) {
        /* The weight table and, for a long text, the map are larger than the cache: fetch
         * both for the features a little ahead, so their misses overlap. */
        if (k + 16 < q->len) {
            uint32_t ahead = q->bucket[k + 16];
            __builtin_prefetch(&weights[ahead]);
            __builtin_prefetch(&q->slots[ahead & mask], 1);
        }
        uint32_t b = q->bucket[k], i = b & mask;
        q->w[k] = weights[b];
        while (q->slots[i].key && q->slots[i].key != b + 1) i = (i + 1) & mask;
        int32_t id;
        if (!q->slots[i].key) {
            q->slots[i].key = b + 1;
            q->slots[i].id = id = next_id++;
            q->first[id] = (int32_t)k;
            q->prev[k] = -1;
        } else {
            id = q->slots[i].id;
            q->prev[k] = last[id];
            q->next[last[id]] = (int32_t)k;
        }
        q->next[k] = INT32_MAX;
        last[id] = (int32_t)k;
    }
    q->ids_used = next_id;
    memcpy(q->at, q->first, (size_t)next_id * sizeof(int32_t));
}

/* Distinct buckets of q's range [a, b): sum of their weights and their number. Four running
 * sums rather than one: a single chain of dependent additions waits ~4 cycles per feature.
 * Summing in another order can change the last bit of a sum in general; the shipped model's
 * weights lie within a few binades of each other (float32, |w| from 0.006 to 2.7), so every
 * partial sum of a span's weights is exact in a double and the order changes nothing. */
void ngscorer_seq_range(const Seq *q, Py_ssize_t a, Py_ssize_t b, double *sum, Py_ssize_t *n) {
    double t0 = 0.0, t1 = 0.0, t2 = 0.0, t3 = 0.0;
    Py_ssize_t count = 0, k = a;
    const int32_t *prev = q->prev;
    const float *w = q->w;
#ifdef __SSE2__
    /* Four features a step in SSE2 (every x86-64 has it): the same four running sums, lane j
     * holding t_j, each fed the same additions in the same order as the scalar loop below. A
     * feature seen before in the range adds +0.0 (its weight's bits masked off), as there. */
    __m128d s01 = _mm_setzero_pd(), s23 = _mm_setzero_pd();
    __m128i fresh = _mm_setzero_si128(), av = _mm_set1_epi32((int32_t)a);
    for (; k + 4 <= b; k += 4) {
        __m128i m = _mm_cmplt_epi32(_mm_loadu_si128((const __m128i *)(prev + k)), av);
        __m128 wv = _mm_and_ps(_mm_loadu_ps(w + k), _mm_castsi128_ps(m));
        s01 = _mm_add_pd(s01, _mm_cvtps_pd(wv));
        s23 = _mm_add_pd(s23, _mm_cvtps_pd(_mm_movehl_ps(wv, wv)));
        fresh = _mm_sub_epi32(fresh, m);
    }
    double lanes[4];
    int32_t counts[4];
    _mm_storeu_pd(lanes, s01);
    _mm_storeu_pd(lanes + 2, s23);
    _mm_storeu_si128((__m128i *)counts, fresh);
    t0 = lanes[0], t1 = lanes[1], t2 = lanes[2], t3 = lanes[3];
    count = (Py_ssize_t)counts[0] + counts[1] + counts[2] + counts[3];
#else
    for (; k + 4 <= b; k += 4) {
        int f0 = prev[k] < a, f1 = prev[k + 1] < a, f2 = prev[k + 2] < a, f3 = prev[k + 3] < a;
        t0 += f0 ? (double)w[k] : 0.0;
        t1 += f1 ? (double)w[k + 1] : 0.0;
        t2 += f2 ? (double)w[k + 2] : 0.0;
        t3 += f3 ? (double)w[k + 3] : 0.0;
        count += f0 + f1 + f2 + f3;
    }
#endif
    for (; k < b; k++) {
        int one = prev[k] < a;
        t0 += one ? (double)w[k] : 0.0;
        count += one;
    }
    *sum = (t0 + t1) + (t2 + t3);
    *n = count;
}
