// C interface of the fused photometric kernel (photometric_kernel.cu, exported by
// libdino_fast_kernels.so and declared for ctypes in pipelines/photometric/cuda.py) and of
// its host twin (photometric_host.cpp, the same functions with the prefix
// dino_photometric_host_, declared in pipelines/photometric/host_twin.py). Plain C types.
//
// A call finishes `num_segments` batches of views ("segments"); segment i holds counts[i]
// views of one size S = sizes[i]:
//   crops[i]  uint8 [count, S, S, 3]       channels last, cropped, resized and flipped
//   rows[i]   [count, WIDTH] float32 or float64 (rows_dtype): pipelines/sampling/param_row.py
//             rows (box and flip ignored; dino_photometric_layout() names the columns)
//   outs[i]   [count, 3, S, S] out_dtype   normalised views, every element written
// All arrays contiguous, on the current device (host memory for the twin). Constants of the
// spec: norm [6] (host) = 1/std then -mean/std per channel, float32; solarize_at, the [0, 1]
// level from which solarize inverts; max_radius, the blur half-width of the spec's largest
// sigma (1 .. dino_photometric_max_radius()), which sizes the blur tiles. workspace: float32
// [>= dino_photometric_workspace_floats(...)] on the device, scratch for the contrast means.
// A row the kernel cannot apply (jitter order not a permutation of 0..3, blur sigma not
// finite and positive or wider than max_radius) turns its view into NaN: the kernel never
// syncs with the host to raise.
//
// Every function returning int returns 0, a cudaError_t value (> 0) after a failed CUDA
// call, or a PHOTO_* code (< 0); dino_photometric_error_string names any of them.
#ifndef DINO_PHOTOMETRIC_API_H_
#define DINO_PHOTOMETRIC_API_H_

#ifdef __cplusplus
extern "C" {
#endif

#define PHOTO_EXPORT __attribute__((visibility("default")))

enum PhotoDtype { PHOTO_FLOAT32 = 0, PHOTO_FLOAT16 = 1, PHOTO_BFLOAT16 = 2, PHOTO_FLOAT64 = 3 };

#define PHOTO_BAD_DTYPE (-1)
#define PHOTO_BAD_ARGUMENT (-2)
#define PHOTO_TOO_MANY_SEGMENTS (-3)
#define PHOTO_BAD_RADIUS (-4)
#define PHOTO_SMALL_WORKSPACE (-5)

// Launches: one pass (contrast means) + one fused pass, for all segments together.
PHOTO_EXPORT int dino_photometric_finish(int num_segments, const void* const* crops,
                                         const void* const* rows, void* const* outs,
                                         const int* counts, const int* sizes, int rows_dtype,
                                         int out_dtype, const float* norm, float solarize_at,
                                         int max_radius, float* workspace,
                                         long long workspace_floats, void* stream);
PHOTO_EXPORT long long dino_photometric_workspace_floats(int num_segments, const int* counts,
                                                         const int* sizes);
PHOTO_EXPORT const char* dino_photometric_error_string(int code);
PHOTO_EXPORT const char* dino_photometric_layout(void);  // PHOTO_LAYOUT of photometric.cuh
PHOTO_EXPORT int dino_photometric_max_segments(void);
PHOTO_EXPORT int dino_photometric_max_radius(void);

#ifdef __cplusplus
}
#endif

#endif  // DINO_PHOTOMETRIC_API_H_
