/* parcnet.h: run a ParCNetV2 library built by parcnet-tvm from your own application.
 *
 * A plain C interface over the TVM runtime (libparcnet.so, beside libtvm_runtime.so and
 * libtvm_ffi.so in the bundle): no C++ types cross it, every buffer belongs to the caller.
 *
 *   parcnet_model* model;
 *   if (parcnet_load("parcnetv2_xt-arm-224.so", NULL, &model) != 0) puts(parcnet_error());
 *   int64_t in[4], out[2];
 *   parcnet_input_shape(model, in);     // N, 3, H, W
 *   parcnet_output_shape(model, out);   // N, classes
 *   parcnet_preprocess_file(model, "cat.jpg", input, 3 * in[2] * in[3]);  // one image
 *   parcnet_run(model, input, N*3*H*W, logits, N*classes, 0);
 *   printf("%s\n", parcnet_class_name(model, best));
 *   parcnet_free(model);
 *
 * Every function returning int gives 0 on success and -1 on failure; parcnet_error() then
 * says what went wrong and how to fix it, in one line ("<what is wrong>: <how to fix>"), for
 * the failed call on this thread. A model may be used
 * from one thread at a time (run it from several threads with one model each).
 */
#ifndef PARCNET_H_
#define PARCNET_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Only these functions leave libparcnet.so. */
#define PARCNET_API __attribute__((visibility("default")))

typedef struct parcnet_model parcnet_model;

/* Load the library, its weights (model.so -> model.params beside it, read once into memory)
 * and its manifest (the input contract, output shape and class names).
 * manifest_path NULL: the manifest beside the library (model.so -> model.json).
 * Refused with a one-line error: a manifest that is not JSON or has entries of the wrong type
 * or range, a library whose size or sha256 is not the one its manifest records (a cut copy,
 * another library's manifest), a weights file whose size or tensor count is not the
 * manifest's. */
PARCNET_API int parcnet_load(const char* library_path, const char* manifest_path, parcnet_model** out);

/* The input shape, float32 NCHW: {batch, 3, height, width}. */
PARCNET_API int parcnet_input_shape(const parcnet_model* model, int64_t shape[4]);

/* The output shape: {batch, classes} logits. */
PARCNET_API int parcnet_output_shape(const parcnet_model* model, int64_t shape[2]);

/* Run the model: input holds input_count floats (the whole input shape), logits receives
 * logits_count floats (the whole output shape). num_threads from 1 to 64 sets the number of
 * threads the kernels run on; 0 keeps the current setting (at first: one per core); any other
 * count is an error. */
PARCNET_API int parcnet_run(parcnet_model* model, const float* input, size_t input_count, float* logits,
                size_t logits_count, int num_threads);

/* One image, preprocessed by the manifest's input contract (the official evaluation: resize,
 * centre crop, scale to [0,1], normalise by mean and std, RGB planes) into out, which holds
 * out_count = 3 * height * width floats: one batch entry of the input.
 * rgb: 8-bit RGB pixels, row by row, row_stride bytes apart (3 * width when packed). */
PARCNET_API int parcnet_preprocess_rgb(const parcnet_model* model, const uint8_t* rgb, int width, int height,
                           int row_stride, float* out, size_t out_count);

/* The same for an image file (JPEG, PNG, BMP or PPM). Images of more than 64 megapixels (both
 * functions), files that are no image and images that cannot be decoded (cut short) are
 * errors. */
PARCNET_API int parcnet_preprocess_file(const parcnet_model* model, const char* image_path, float* out, size_t out_count);

/* The name of class `index` (from the class-name file the manifest names), or NULL when the
 * index is out of range or the bundle has no names. Valid until parcnet_free. */
PARCNET_API const char* parcnet_class_name(const parcnet_model* model, int index);

/* What the last failed call on this thread went wrong with (empty if none). */
PARCNET_API const char* parcnet_error(void);

/* Release the model (NULL is allowed). */
PARCNET_API void parcnet_free(parcnet_model* model);

#ifdef __cplusplus
}
#endif

#endif /* PARCNET_H_ */
