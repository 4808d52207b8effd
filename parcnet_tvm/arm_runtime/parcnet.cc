// libparcnet: the C API of parcnet.h over the TVM runtime (Relax VM), and the input contract
// of the manifest: the official evaluation's preprocessing, done here so that an application,
// our runner and the example all feed the model what it was evaluated on.

#include "parcnet.h"

#include <dlpack/dlpack.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifdef PARCNET_HAVE_STB_IMAGE
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#include <stb_image.h>
#endif

namespace {

namespace json = tvm::ffi::json;
using tvm::ffi::Any;
using tvm::ffi::Function;
using tvm::ffi::Module;

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

thread_local std::string last_error;

// Runs `body`; an exception becomes -1 and the thread's error text.
template <typename Body>
int Guard(Body body) {
  try {
    body();
    last_error.clear();
    return 0;
  } catch (const tvm::ffi::Error& err) {
    last_error = err.message();
  } catch (const std::exception& err) {
    last_error = err.what();
  }
  return -1;
}

// The manifest's "input" entry: how an image becomes the model's input (see
// parcnet_tvm/input_contract.py, which writes it from the official evaluation settings).
struct Contract {
  bool present = false;
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
  float pixel_scale = 255;
  int shorter_side = 0;               // resize the shorter side to this, keeping the aspect ...
  int resize_height = 0, resize_width = 0;  // ... or to exactly this size
  int crop_height = 0, crop_width = 0;      // then this centre crop
  bool bicubic = true;                      // else bilinear
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

Any Field(const json::Object& object, const char* key, const std::string& where) {
  if (!object.count(key)) throw Error(where + " has no \"" + key + "\": rebuild the library with parcnet-tvm");
  return object.at(key);
}

double Number(const Any& value) { return value.cast<double>(); }

std::vector<int64_t> Ints(const Any& value) {
  std::vector<int64_t> out;
  for (const auto& item : value.cast<json::Array>()) out.push_back(item.cast<int64_t>());
  return out;
}

Contract ParseContract(const json::Object& input, const std::string& where) {
  Contract c;
  c.present = true;
  for (const char* key : {"mean", "std"}) {
    auto values = Field(input, key, where).cast<json::Array>();
    if (values.size() != 3) throw Error(where + ": \"" + key + "\" must hold 3 numbers");
    for (int i = 0; i < 3; ++i) (key[0] == 'm' ? c.mean : c.std)[i] = float(Number(values[i]));
  }
  c.pixel_scale = float(Number(Field(input, "pixel_scale", where)));
  auto resize = Field(input, "resize", where).cast<json::Object>();
  if (resize.count("shorter_side")) {
    c.shorter_side = int(Number(resize.at("shorter_side")));
  } else {
    c.resize_height = int(Number(Field(resize, "height", where)));
    c.resize_width = int(Number(Field(resize, "width", where)));
  }
  auto crop = Ints(Field(input, "crop", where));
  if (crop.size() != 2) throw Error(where + ": \"crop\" must be [height, width]");
  c.crop_height = int(crop[0]);
  c.crop_width = int(crop[1]);
  std::string interpolation = Field(input, "interpolation", where).cast<std::string>();
  if (interpolation != "bicubic" && interpolation != "bilinear") {
    throw Error(where + ": interpolation " + interpolation + " is not supported (bicubic or bilinear)");
  }
  c.bicubic = interpolation == "bicubic";
  if (Field(input, "channel_order", where).cast<std::string>() != "RGB" ||
      Field(input, "layout", where).cast<std::string>() != "NCHW") {
    throw Error(where + ": only RGB channels in NCHW layout are supported");
  }
  return c;
}

// ---- Resampling as Pillow's Image.resize does it for 8-bit images (what torchvision's
// Resize uses in the official evaluation): separable passes with the filter widened by the
// reduction factor (antialiasing), 22-bit fixed-point weights, each pass rounded to 8 bits.

constexpr int kPrecisionBits = 22;

double FilterWeight(double x, bool bicubic) {
  x = std::fabs(x);
  if (!bicubic) return x < 1.0 ? 1.0 - x : 0.0;
  constexpr double a = -0.5;  // Pillow's bicubic (Keys' cubic convolution)
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

struct Taps {
  std::vector<int> first, count;  // per output pixel: first input pixel, number of taps
  std::vector<int32_t> weights;   // per output pixel: `stride` fixed-point weights
  int stride = 0;
};

Taps ComputeTaps(int in_size, int out_size, bool bicubic) {
  const double scale = double(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = (bicubic ? 2.0 : 1.0) * filter_scale;
  Taps taps;
  taps.stride = int(std::ceil(support)) * 2 + 1;
  taps.weights.assign(size_t(out_size) * taps.stride, 0);
  std::vector<double> w(taps.stride);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const int lo = std::max(int(center - support + 0.5), 0);
    const int n = std::min(int(center + support + 0.5), in_size) - lo;
    double total = 0;
    for (int i = 0; i < n; ++i) total += w[i] = FilterWeight((i + lo - center + 0.5) / filter_scale, bicubic);
    for (int i = 0; i < n; ++i) {
      const double v = (total != 0.0 ? w[i] / total : w[i]) * (1 << kPrecisionBits);
      taps.weights[size_t(o) * taps.stride + i] = int32_t(v < 0 ? v - 0.5 : v + 0.5);
    }
    taps.first.push_back(lo);
    taps.count.push_back(n);
  }
  return taps;
}

struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // packed rows
};

uint8_t Round8(int64_t acc) { return uint8_t(std::clamp<int64_t>(acc >> kPrecisionBits, 0, 255)); }

// One pass along x (horizontal) or y.
Image ResamplePass(const Image& in, int out_size, bool horizontal, bool bicubic) {
  Taps taps = ComputeTaps(horizontal ? in.width : in.height, out_size, bicubic);
  Image out;
  out.width = horizontal ? out_size : in.width;
  out.height = horizontal ? in.height : out_size;
  out.rgb.resize(size_t(out.width) * out.height * 3);
  for (int y = 0; y < out.height; ++y) {
    for (int x = 0; x < out.width; ++x) {
      const int o = horizontal ? x : y;
      const int32_t* k = &taps.weights[size_t(o) * taps.stride];
      for (int c = 0; c < 3; ++c) {
        int64_t acc = 1 << (kPrecisionBits - 1);
        for (int i = 0; i < taps.count[o]; ++i) {
          const int sx = horizontal ? taps.first[o] + i : x, sy = horizontal ? y : taps.first[o] + i;
          acc += int64_t(in.rgb[(size_t(sy) * in.width + sx) * 3 + c]) * k[i];
        }
        out.rgb[(size_t(y) * out.width + x) * 3 + c] = Round8(acc);
      }
    }
  }
  return out;
}

Image Resize(const Image& in, int width, int height, bool bicubic) {
  // Pillow (>= 11) runs the vertical pass first when the height shrinks by more than twice
  // as many pixels as the width; the order changes the 8-bit rounding in between.
  const bool vertical_first = in.height - height > 0 && in.height - height > 2 * (in.width - width);
  Image out = in;
  for (bool horizontal : {!vertical_first, vertical_first}) {
    if (horizontal && out.width != width) out = ResamplePass(out, width, true, bicubic);
    if (!horizontal && out.height != height) out = ResamplePass(out, height, false, bicubic);
  }
  return out;
}

void Preprocess(const Contract& c, const Image& image, float* out, size_t out_count) {
  if (!c.present) throw Error("the manifest has no input contract: rebuild the library with parcnet-tvm");
  if (out_count != size_t(3) * c.crop_height * c.crop_width) {
    throw Error("the output buffer holds " + std::to_string(out_count) + " floats; one preprocessed image takes " +
                std::to_string(size_t(3) * c.crop_height * c.crop_width));
  }
  if (image.width <= 0 || image.height <= 0) throw Error("the image is empty");
  int width = c.resize_width, height = c.resize_height;
  if (c.shorter_side > 0) {  // torchvision's Resize(int): the longer side follows, truncated
    const bool wide = image.width > image.height;
    const int64_t shorter = wide ? image.height : image.width, longer = wide ? image.width : image.height;
    const int other = int(double(int64_t(c.shorter_side) * longer) / double(shorter));
    width = wide ? other : c.shorter_side;
    height = wide ? c.shorter_side : other;
  }
  if (width < c.crop_width || height < c.crop_height) {
    throw Error("the resized image (" + std::to_string(width) + "x" + std::to_string(height) +
                ") is smaller than the crop: the manifest's resize and crop disagree");
  }
  Image resized = Resize(image, width, height, c.bicubic);
  // torchvision's CenterCrop: offsets rounded half to even, as Python's round() does.
  const int top = int(std::nearbyint((height - c.crop_height) / 2.0));
  const int left = int(std::nearbyint((width - c.crop_width) / 2.0));
  for (int ch = 0; ch < 3; ++ch) {
    for (int y = 0; y < c.crop_height; ++y) {
      for (int x = 0; x < c.crop_width; ++x) {
        const float v = float(resized.rgb[(size_t(y + top) * width + (x + left)) * 3 + ch]) / c.pixel_scale;
        out[(size_t(ch) * c.crop_height + y) * c.crop_width + x] = (v - c.mean[ch]) / c.std[ch];
      }
    }
  }
}

tvm::runtime::Tensor AsTensor(Any value) {
  if (auto tensor = value.try_cast<tvm::runtime::Tensor>()) return *tensor;
  return value.cast<tvm::ffi::Array<Any>>()[0].cast<tvm::runtime::Tensor>();
}

std::string Dims(const std::vector<int64_t>& shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? "x" : "") + std::to_string(shape[i]);
  return text;
}

size_t Elements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

// The weights file beside the library (parcnet_tvm/params.py): a TVM parameter file whose
// tensors, named w0000, w0001, ..., follow the input in main's parameters. TVM reads each
// tensor straight into its own buffer: the weights are held once.
void LoadWeights(const std::string& path, bool required, std::vector<Any>* arguments) {
  if (!std::ifstream(path).good()) {
    if (required) throw Error("no weights file " + path + ": keep the .params written beside the library");
    return;  // a library built before the weights left it
  }
  tvm::ffi::Map<tvm::ffi::String, tvm::runtime::Tensor> weights;
  try {
    weights = (*Function::GetGlobal("runtime.LoadParamsFromFile"))(path)
                  .cast<tvm::ffi::Map<tvm::ffi::String, tvm::runtime::Tensor>>();
  } catch (const tvm::ffi::Error& err) {
    throw Error("weights file " + path + " is damaged (" + err.message() + "): rebuild the library");
  }
  std::vector<std::string> names;
  for (const auto& item : weights) names.push_back(item.first);
  std::sort(names.begin(), names.end());
  for (const auto& name : names) arguments->push_back(weights.at(name));
}

// TVM's pool at `threads` threads, one per listed core (mode -3, as targets.use_threads):
// without a CPU list TVM sizes it from the topology, which some kernels report wrongly.
void UseThreads(int threads) {
  int cores = int(std::thread::hardware_concurrency());
  if (cores < 1) cores = 1;
  tvm::ffi::Array<tvm::ffi::String> cpus;
  for (int i = 0; i < threads; ++i) cpus.push_back(std::to_string(i % cores));
  (*Function::GetGlobal("runtime.config_threadpool"))(-3, threads, cpus);
}

}  // namespace

struct parcnet_model {
  std::string library;
  Function main;
  std::vector<int64_t> input_shape, output_shape;
  Contract contract;
  std::vector<std::string> class_names;
  tvm::runtime::Tensor input;  // reused by every run
  std::vector<Any> arguments;  // main's: the input, then the weights (read once from the .params file)
};

extern "C" {

int parcnet_load(const char* library_path, const char* manifest_path, parcnet_model** out) {
  return Guard([&] {
    if (library_path == nullptr || out == nullptr) throw Error("parcnet_load: library_path and out must not be NULL");
    *out = nullptr;
    auto model = std::make_unique<parcnet_model>();
    model->library = library_path;
    if (!std::ifstream(model->library).good()) throw Error("library " + model->library + " does not exist");
    std::string manifest = manifest_path != nullptr ? std::string(manifest_path)
                                                    : model->library.substr(0, model->library.rfind('.')) + ".json";
    if (!std::ifstream(manifest).good()) {
      throw Error("no manifest " + manifest + ": keep the .json written beside the library, or name it");
    }
    tvm::ffi::String parse_error;
    Any root = json::Parse(ReadFile(manifest), &parse_error);
    if (!parse_error.empty()) throw Error("manifest " + manifest + " is not valid JSON");
    auto object = root.cast<json::Object>();
    model->input_shape = Ints(Field(object, "input_shape", manifest));
    if (model->input_shape.size() != 4) throw Error("manifest " + manifest + ": input_shape is not N,C,H,W");
    if (object.count("input")) model->contract = ParseContract(object.at("input").cast<json::Object>(), manifest);
    if (object.count("output")) {
      auto output = object.at("output").cast<json::Object>();
      model->output_shape = Ints(Field(output, "shape", manifest));
      if (output.count("class_names")) {  // a file beside the manifest, one name per line
        std::string dir = manifest.rfind('/') == std::string::npos ? "" : manifest.substr(0, manifest.rfind('/') + 1);
        std::ifstream names(dir + output.at("class_names").cast<std::string>());
        for (std::string line; std::getline(names, line);) model->class_names.push_back(line);
      }
    }
    Module lib = [&] {
      try {
        return Module::LoadFromFile(model->library);
      } catch (const tvm::ffi::Error& err) {
        throw Error("cannot load " + model->library + " (" + err.message() +
                    "): is it a library built for this device (--target arm for the board)?");
      }
    }();
    auto load_executable = lib->GetFunction("vm_load_executable");
    if (!load_executable) throw Error(model->library + " is not a Relax VM library built by parcnet-tvm");
    Module vm = (*load_executable)().cast<Module>();
    // One CPU device with the pooled allocator (2), as tvm.relax.VirtualMachine sets it up.
    (*vm->GetFunction("vm_initialization"))(int(kDLCPU), 0, 2);
    auto main = vm->GetFunction("main");
    if (!main) throw Error(model->library + " has no main function");
    model->main = *main;
    model->input = tvm::runtime::Tensor::Empty(tvm::ffi::Shape(model->input_shape), DLDataType{kDLFloat, 32, 1},
                                               DLDevice{kDLCPU, 0});
    model->arguments.push_back(model->input);
    LoadWeights(model->library.substr(0, model->library.rfind('.')) + ".params", object.count("params") > 0,
                &model->arguments);
    *out = model.release();
  });
}

int parcnet_input_shape(const parcnet_model* model, int64_t shape[4]) {
  return Guard([&] {
    if (model == nullptr || shape == nullptr) throw Error("parcnet_input_shape: NULL argument");
    std::copy(model->input_shape.begin(), model->input_shape.end(), shape);
  });
}

int parcnet_output_shape(const parcnet_model* model, int64_t shape[2]) {
  return Guard([&] {
    if (model == nullptr || shape == nullptr) throw Error("parcnet_output_shape: NULL argument");
    if (model->output_shape.size() != 2) throw Error("the manifest has no output shape: rebuild the library");
    std::copy(model->output_shape.begin(), model->output_shape.end(), shape);
  });
}

int parcnet_run(parcnet_model* model, const float* input, size_t input_count, float* logits, size_t logits_count,
                int num_threads) {
  return Guard([&] {
    if (model == nullptr || input == nullptr || logits == nullptr) throw Error("parcnet_run: NULL argument");
    if (input_count != Elements(model->input_shape)) {
      throw Error("input holds " + std::to_string(input_count) + " floats; the model takes " +
                  std::to_string(Elements(model->input_shape)) + " (float32 " + Dims(model->input_shape) + ")");
    }
    if (num_threads > 0) UseThreads(num_threads);
    model->input.CopyFromBytes(input, input_count * sizeof(float));
    std::vector<tvm::ffi::AnyView> arguments(model->arguments.begin(), model->arguments.end());
    Any returned;
    model->main.CallPacked(arguments.data(), int32_t(arguments.size()), &returned);
    tvm::runtime::Tensor result = AsTensor(returned);
    std::vector<int64_t> shape(result->shape, result->shape + result->ndim);
    if (Elements(shape) != logits_count) {
      throw Error("logits buffer holds " + std::to_string(logits_count) + " floats; the model gives " +
                  std::to_string(Elements(shape)) + " (" + Dims(shape) + ")");
    }
    result.CopyToBytes(logits, logits_count * sizeof(float));
  });
}

int parcnet_preprocess_rgb(const parcnet_model* model, const uint8_t* rgb, int width, int height, int row_stride,
                           float* out, size_t out_count) {
  return Guard([&] {
    if (model == nullptr || rgb == nullptr || out == nullptr) throw Error("parcnet_preprocess_rgb: NULL argument");
    if (width <= 0 || height <= 0 || row_stride < 3 * width) {
      throw Error("parcnet_preprocess_rgb: bad image geometry (width, height > 0; row_stride >= 3 * width)");
    }
    Image image;
    image.width = width;
    image.height = height;
    image.rgb.resize(size_t(width) * height * 3);
    for (int y = 0; y < height; ++y) std::memcpy(&image.rgb[size_t(y) * width * 3], rgb + size_t(y) * row_stride, size_t(width) * 3);
    Preprocess(model->contract, image, out, out_count);
  });
}

int parcnet_preprocess_file(const parcnet_model* model, const char* image_path, float* out, size_t out_count) {
  return Guard([&] {
    if (model == nullptr || image_path == nullptr || out == nullptr) throw Error("parcnet_preprocess_file: NULL argument");
#ifdef PARCNET_HAVE_STB_IMAGE
    int w = 0, h = 0, channels = 0;
    unsigned char* pixels = stbi_load(image_path, &w, &h, &channels, 3);
    if (pixels == nullptr) {
      throw Error(std::string(image_path) + " is not a readable image (" + stbi_failure_reason() +
                  "): give a JPEG, PNG, BMP or PPM file");
    }
    Image image;
    image.width = w;
    image.height = h;
    image.rgb.assign(pixels, pixels + size_t(w) * h * 3);
    stbi_image_free(pixels);
    Preprocess(model->contract, image, out, out_count);
#else
    throw Error("libparcnet was built without image decoding: decode the image yourself and call parcnet_preprocess_rgb");
#endif
  });
}

const char* parcnet_class_name(const parcnet_model* model, int index) {
  if (model == nullptr || index < 0 || size_t(index) >= model->class_names.size()) return nullptr;
  return model->class_names[index].c_str();
}

const char* parcnet_error(void) { return last_error.c_str(); }

void parcnet_free(parcnet_model* model) { delete model; }

}  // extern "C"
