// classify: the smallest application around a parcnet-tvm bundle. It loads the model through
// the C API of parcnet.h, preprocesses an image by the contract in the model's manifest, runs
// the model and prints the five most likely ImageNet classes with their names.
//
//   ./classify ../parcnetv2_xt-arm-224.so cat.jpg [threads]

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "parcnet.h"

namespace {

// Frees the model however main() returns.
struct Model {
  parcnet_model* handle = nullptr;
  ~Model() { parcnet_free(handle); }
};

int Fail(const char* what) {
  std::fprintf(stderr, "error: %s: %s\n", what, parcnet_error());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.so IMAGE [THREADS]\n", argv[0]);
    return 2;
  }
  const int threads = argc > 3 ? std::atoi(argv[3]) : 0;  // 0: one per core

  Model model;
  if (parcnet_load(argv[1], nullptr, &model.handle) != 0) return Fail("load");
  int64_t in[4], out[2];
  if (parcnet_input_shape(model.handle, in) != 0 || parcnet_output_shape(model.handle, out) != 0) {
    return Fail("shapes");
  }

  // One image, preprocessed into the first batch entry; the others get the same image.
  const size_t per_image = size_t(in[1] * in[2] * in[3]);
  std::vector<float> input(per_image * size_t(in[0]));
  if (parcnet_preprocess_file(model.handle, argv[2], input.data(), per_image) != 0) return Fail("image");
  for (int64_t n = 1; n < in[0]; ++n) std::copy_n(input.begin(), per_image, input.begin() + n * per_image);

  std::vector<float> logits(size_t(out[0] * out[1]));
  if (parcnet_run(model.handle, input.data(), input.size(), logits.data(), logits.size(), threads) != 0) {
    return Fail("run");
  }

  std::vector<int> order(static_cast<size_t>(out[1]));
  std::iota(order.begin(), order.end(), 0);
  const size_t top = std::min<size_t>(5, order.size());
  std::partial_sort(order.begin(), order.begin() + top, order.end(),
                    [&](int a, int b) { return logits[a] > logits[b]; });
  for (size_t i = 0; i < top; ++i) {
    const char* name = parcnet_class_name(model.handle, order[i]);
    std::printf("%d %.6f %s\n", order[i], logits[order[i]], name ? name : "(no class names)");
  }
  return 0;
}
