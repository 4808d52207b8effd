// parcnet_runner: run a ParCNetV2 library built by parcnet-tvm on the board.
//
//   parcnet_runner MODEL.so --input IMAGE_OR_RAW [--shape 1,3,224,224] [--output OUT.raw]
//                  [--repeat N] [--top K] [--threads N]
//
// The input is a raw float32 file in the model's input shape (NCHW), or an image file
// (JPEG/PNG/BMP/PPM), preprocessed like ImageNet evaluation: resize the shorter side to
// size/0.875, centre crop, scale to [0,1], normalise with the ImageNet mean and std.
// The shape comes from --shape, else from MODEL.json (the manifest beside the library).
// Prints the top-K classes; --output writes the logits as raw float32; --repeat N times N
// runs after one warm-up and prints median and p90 latency, measured on this machine.
// --threads N runs the kernels on N threads (default: one per core of the board).
// Any bad input prints one "error: ..." line and exits with status 1.
// The timed runs are bracketed by prctl markers that the RK3288 estimate's qemu plugin
// (parcnet_tvm/arm_counter) counts between; on a real kernel they fail with EINVAL, harmlessly.

#include <dlfcn.h>
#include <dlpack/dlpack.h>
#include <link.h>
#include <sys/prctl.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/tensor.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef PARCNET_HAVE_STB_IMAGE
#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#include <stb_image.h>
#endif

namespace {

using tvm::ffi::Function;
using tvm::ffi::Module;

struct UserError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

constexpr float kMean[3] = {0.485f, 0.456f, 0.406f};
constexpr float kStd[3] = {0.229f, 0.224f, 0.225f};
constexpr float kCropRatio = 0.875f;  // 224 / 256, the usual ImageNet evaluation crop

struct Options {
  std::string library, input, output, shape_text;
  int repeat = 0;
  int top = 5;
  int threads = 0;
};

[[noreturn]] void Usage() {
  throw UserError(
      "usage: parcnet_runner MODEL.so --input IMAGE_OR_RAW [--shape 1,3,224,224] "
      "[--output OUT.raw] [--repeat N] [--top K] [--threads N]");
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UserError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") opt.input = value();
    else if (arg == "--output") opt.output = value();
    else if (arg == "--shape") opt.shape_text = value();
    else if (arg == "--repeat") opt.repeat = std::stoi(value());
    else if (arg == "--top") opt.top = std::stoi(value());
    else if (arg == "--threads") opt.threads = std::stoi(value());
    else if (arg == "-h" || arg == "--help") Usage();
    else if (!arg.empty() && arg[0] == '-') throw UserError("unknown option " + arg);
    else if (opt.library.empty()) opt.library = arg;
    else Usage();
  }
  if (opt.library.empty() || opt.input.empty()) Usage();
  return opt;
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) shape.push_back(std::stoll(item));
  if (shape.size() != 4) throw UserError("--shape must be N,C,H,W, got " + text);
  return shape;
}

// The input shape from the manifest beside the library (MODEL.json).
std::vector<int64_t> ShapeFromManifest(const std::string& library) {
  std::string manifest = library.substr(0, library.rfind('.')) + ".json";
  if (!FileExists(manifest)) {
    throw UserError("no --shape given and no manifest " + manifest + " beside the library");
  }
  tvm::ffi::String error;
  auto value = tvm::ffi::json::Parse(ReadFile(manifest), &error);
  if (!error.empty()) throw UserError("manifest " + manifest + " is not valid JSON");
  auto object = value.cast<tvm::ffi::json::Object>();
  std::vector<int64_t> shape;
  for (const auto& dim : object.at("input_shape").cast<tvm::ffi::json::Array>()) {
    shape.push_back(dim.cast<int64_t>());
  }
  return shape;
}

bool IsRaw(const std::string& path) {
  auto dot = path.rfind('.');
  std::string ext = dot == std::string::npos ? "" : path.substr(dot + 1);
  return ext == "raw" || ext == "bin" || ext == "f32";
}

// Bilinear sample of an HWC uint8 image at (y, x), channel c.
float Sample(const unsigned char* img, int h, int w, int channels, float y, float x, int c) {
  y = std::clamp(y, 0.0f, float(h - 1));
  x = std::clamp(x, 0.0f, float(w - 1));
  int y0 = int(y), x0 = int(x);
  int y1 = std::min(y0 + 1, h - 1), x1 = std::min(x0 + 1, w - 1);
  float dy = y - y0, dx = x - x0;
  auto at = [&](int yy, int xx) { return float(img[(yy * w + xx) * channels + c]); };
  return (at(y0, x0) * (1 - dx) + at(y0, x1) * dx) * (1 - dy) +
         (at(y1, x0) * (1 - dx) + at(y1, x1) * dx) * dy;
}

std::vector<float> LoadImage(const std::string& path, const std::vector<int64_t>& shape) {
#ifdef PARCNET_HAVE_STB_IMAGE
  int w = 0, h = 0, channels = 0;
  unsigned char* img = stbi_load(path.c_str(), &w, &h, &channels, 3);
  if (img == nullptr) {
    throw UserError(path + " is not a readable image (" + stbi_failure_reason() +
                    "); give a JPEG/PNG/BMP/PPM image or a raw float32 file (.raw)");
  }
  const int out_h = int(shape[2]), out_w = int(shape[3]);
  // Resize so the shorter side is out/0.875, then take the centre out_h x out_w crop.
  const float scale = std::max(out_h / kCropRatio / h, out_w / kCropRatio / w);
  const float crop_y = (h * scale - out_h) / 2, crop_x = (w * scale - out_w) / 2;
  std::vector<float> data(size_t(shape[0]) * 3 * out_h * out_w);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < out_h; ++y) {
      for (int x = 0; x < out_w; ++x) {
        float sy = (y + crop_y + 0.5f) / scale - 0.5f, sx = (x + crop_x + 0.5f) / scale - 0.5f;
        float v = Sample(img, h, w, 3, sy, sx, c) / 255.0f;
        data[(size_t(c) * out_h + y) * out_w + x] = (v - kMean[c]) / kStd[c];
      }
    }
  }
  stbi_image_free(img);
  for (int64_t n = 1; n < shape[0]; ++n) {  // the same image for every batch entry
    std::copy_n(data.begin(), 3 * out_h * out_w, data.begin() + n * 3 * out_h * out_w);
  }
  return data;
#else
  throw UserError("this runner was built without image support: give a raw float32 file (.raw)");
#endif
}

std::vector<float> LoadInput(const std::string& path, const std::vector<int64_t>& shape) {
  if (!FileExists(path)) throw UserError("input " + path + " does not exist");
  size_t count = std::accumulate(shape.begin(), shape.end(), size_t(1), std::multiplies<>());
  if (!IsRaw(path)) return LoadImage(path, shape);
  std::string bytes = ReadFile(path);
  if (bytes.size() != count * sizeof(float)) {
    throw UserError("input " + path + " has " + std::to_string(bytes.size()) + " bytes; the model takes " +
                    std::to_string(count * sizeof(float)) + " (float32, shape " +
                    std::to_string(shape[0]) + "x" + std::to_string(shape[1]) + "x" +
                    std::to_string(shape[2]) + "x" + std::to_string(shape[3]) + ")");
  }
  std::vector<float> data(count);
  std::memcpy(data.data(), bytes.data(), bytes.size());
  return data;
}

Function LoadMain(const std::string& library) {
  if (!FileExists(library)) throw UserError("library " + library + " does not exist");
  Module lib = [&] {
    try {
      return Module::LoadFromFile(library);
    } catch (const tvm::ffi::Error& err) {
      throw UserError("cannot load " + library + " (" + err.message() +
                      "): is it a library built for this board (--target arm)?");
    }
  }();
  auto load_executable = lib->GetFunction("vm_load_executable");
  if (!load_executable) throw UserError(library + " is not a Relax VM library built by parcnet-tvm");
  Module vm = (*load_executable)().cast<Module>();
  // One CPU device with the pooled allocator (2), as tvm.relax.VirtualMachine sets it up.
  (*vm->GetFunction("vm_initialization"))(int(kDLCPU), 0, 2);
  auto main = vm->GetFunction("main");
  if (!main) throw UserError(library + " has no main function");
  return *main;
}

constexpr unsigned long kCounterMarker = 0x50415243;  // "PARC"

// Tell the counting plugin where the model library is loaded, so it can name its kernels.
void MarkLibraryBase(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_NOLOAD);
  struct link_map* map = nullptr;
  if (handle != nullptr && dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr) {
    prctl(kCounterMarker, 2UL, static_cast<unsigned long>(map->l_addr), 0UL, 0UL);
  }
  if (handle != nullptr) dlclose(handle);
}

tvm::runtime::Tensor AsTensor(tvm::ffi::Any value) {
  if (auto tensor = value.try_cast<tvm::runtime::Tensor>()) return *tensor;
  return value.cast<tvm::ffi::Array<tvm::ffi::Any>>()[0].cast<tvm::runtime::Tensor>();
}

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = q * (v.size() - 1);
  size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

int Run(const Options& opt) {
  std::vector<int64_t> shape = opt.shape_text.empty() ? ShapeFromManifest(opt.library) : ParseShape(opt.shape_text);
  std::vector<float> input = LoadInput(opt.input, shape);
  Function main = LoadMain(opt.library);
  if (opt.threads > 0) {
    // TVM's pool sizes itself to the cores it finds; an explicit count overrides that.
    constexpr int kBigCores = 1;  // threading::ThreadGroup::kBig
    (*Function::GetGlobal("runtime.config_threadpool"))(kBigCores, opt.threads);
  }

  DLDevice cpu{kDLCPU, 0};
  auto x = tvm::runtime::Tensor::Empty(tvm::ffi::Shape(shape), DLDataType{kDLFloat, 32, 1}, cpu);
  x.CopyFromBytes(input.data(), input.size() * sizeof(float));
  tvm::runtime::Tensor logits = AsTensor(main(x));

  size_t count = 1;
  for (int i = 0; i < logits->ndim; ++i) count *= logits->shape[i];
  std::vector<float> out(count);
  logits.CopyToBytes(out.data(), count * sizeof(float));
  if (!opt.output.empty()) {
    std::ofstream f(opt.output, std::ios::binary);
    f.write(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float));
    if (!f) throw UserError("cannot write " + opt.output);
  }
  const size_t classes = count / size_t(shape[0]);
  std::vector<size_t> order(classes);
  std::iota(order.begin(), order.end(), 0);
  const size_t k = std::min<size_t>(opt.top, classes);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](size_t a, size_t b) { return out[a] > out[b]; });
  std::printf("top-%zu (image 0): class logit\n", k);
  for (size_t i = 0; i < k; ++i) std::printf("  %zu %.6f\n", order[i], out[order[i]]);

  if (opt.repeat > 0) {
    std::vector<double> ms;
    MarkLibraryBase(opt.library);
    prctl(kCounterMarker, 1UL, 0UL, 0UL, 0UL);
    for (int i = 0; i < opt.repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      main(x);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    prctl(kCounterMarker, 0UL, 0UL, 0UL, 0UL);
    std::printf("latency over %d runs after 1 warm-up: median %.2f ms, p90 %.2f ms, min %.2f ms\n", opt.repeat,
                Percentile(ms, 0.5), Percentile(ms, 0.9), *std::min_element(ms.begin(), ms.end()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArgs(argc, argv));
  } catch (const UserError& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
  } catch (const tvm::ffi::Error& err) {
    std::fprintf(stderr, "error: %s\n", err.message().c_str());
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
  }
  return 1;
}
