// libparcnet: the C API of parcnet.h over the TVM runtime (Relax VM), and the input contract
// of the manifest: the official evaluation's preprocessing, done here so that an application,
// our runner and the example all feed the model what it was evaluated on.

#include "parcnet.h"

#include <dlpack/dlpack.h>
#include <elf.h>
#include <sys/stat.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/runtime/tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
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

// Limits on what a caller or a file may ask for: beyond them a typo or a damaged file would
// make a 32-bit board allocate gigabytes or start thousands of threads.
constexpr int kMaxThreads = 64;
constexpr int64_t kMaxPixels = int64_t(1) << 26;    // 64 megapixels: an image to decode or resize
constexpr int64_t kMaxElements = int64_t(1) << 26;  // floats in the input or output (256 MB)
constexpr int64_t kMaxSide = int64_t(1) << 15;      // a resize or crop side in the manifest

constexpr const char* kManifestFix =
    "give the manifest parcnet-tvm wrote with this library, or rebuild the library";

// Errors are shown as one line (the runner prints "error: <it>"): a runtime message that spans
// lines is joined.
std::string OneLine(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  std::replace(text.begin(), text.end(), '\r', ' ');
  return text;
}

// Runs `body`; an exception becomes -1 and the thread's error text.
template <typename Body>
int Guard(Body body) {
  try {
    body();
    last_error.clear();
    return 0;
  } catch (const tvm::ffi::Error& err) {
    last_error = OneLine(err.message());
  } catch (const std::bad_alloc&) {
    last_error = "out of memory: free memory on the device, or use a smaller input";
  } catch (const std::exception& err) {
    last_error = OneLine(err.what());
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

// Every file is checked before it is read, so a wrong path is named as such rather than by
// a loader's or decoder's message. Returns the file's size.
int64_t RequireFile(const std::string& path, const std::string& what, const std::string& fix) {
  struct stat st {};
  if (path.empty()) throw Error(what + ": the path is empty: " + fix);
  if (stat(path.c_str(), &st) != 0) throw Error(what + " " + path + " does not exist: " + fix);
  if (!S_ISREG(st.st_mode)) throw Error(what + " " + path + " is not a file: " + fix);
  return int64_t(st.st_size);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path + ": check its permissions");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// ---- The manifest's entries, each checked for its type and range where it is read: a damaged
// or foreign manifest is named with the entry that is wrong, never by a cast error.

[[noreturn]] void BadEntry(const std::string& where, const std::string& key, const std::string& expected) {
  throw Error("manifest " + where + ": \"" + key + "\" is not " + expected + ": " + kManifestFix);
}

Any Field(const json::Object& object, const char* key, const std::string& where) {
  if (!object.count(key)) throw Error("manifest " + where + " has no \"" + key + "\": " + kManifestFix);
  return object.at(key);
}

// The entry `key` (present, not null) as T, or a one-line error naming what it should be.
template <typename T>
T Entry(const json::Object& object, const char* key, const std::string& where, const char* expected) {
  auto value = Field(object, key, where).try_cast<T>();
  if (!value) BadEntry(where, key, expected);
  return *value;
}

double Number(const Any& value, const std::string& where, const char* key) {
  auto number = value.try_cast<double>();
  if (!number || !std::isfinite(*number)) BadEntry(where, key, "a number");
  return *number;
}

// A whole number from 1 to `most` (a dimension, a size), or a one-line error naming the entry.
int64_t Positive(const Any& value, const std::string& where, const char* key, int64_t most, const char* expected) {
  auto v = value.try_cast<int64_t>();
  if (!v || *v < 1 || *v > most) BadEntry(where, key, expected);
  return *v;
}

// `count` such numbers: a shape.
std::vector<int64_t> Dims(const json::Object& object, const char* key, size_t count, int64_t most,
                          const std::string& where, const char* expected) {
  std::vector<int64_t> out;
  for (const auto& item : Entry<json::Array>(object, key, where, expected)) {
    out.push_back(Positive(item, where, key, most, expected));
  }
  if (out.size() != count) BadEntry(where, key, expected);
  return out;
}

// A shape's element count, refused past kMaxElements (also what keeps the product from overflowing).
size_t CheckedElements(const std::vector<int64_t>& shape, const std::string& where, const char* key) {
  int64_t n = 1;
  for (int64_t d : shape) {
    n *= d;
    if (n > kMaxElements) {
      throw Error("manifest " + where + ": \"" + key + "\" holds more than " + std::to_string(kMaxElements) +
                  " floats, more than a board holds: " + kManifestFix);
    }
  }
  return size_t(n);
}

// The normalisation: 3 means, 3 non-zero stds (dividing by 0 would fill the input with inf).
void ParseNormalisation(const json::Object& input, const std::string& where, Contract* c) {
  for (const char* key : {"mean", "std"}) {
    auto values = Entry<json::Array>(input, key, where, "a list of 3 numbers");
    if (values.size() != 3) BadEntry(where, key, "a list of 3 numbers");
    for (int i = 0; i < 3; ++i) (key[0] == 'm' ? c->mean : c->std)[i] = float(Number(values[i], where, key));
  }
  if (c->std[0] == 0 || c->std[1] == 0 || c->std[2] == 0) BadEntry(where, "std", "3 non-zero numbers");
  c->pixel_scale = float(Number(Field(input, "pixel_scale", where), where, "pixel_scale"));
  if (!(c->pixel_scale > 0)) BadEntry(where, "pixel_scale", "a positive number");
}

Contract ParseContract(const json::Object& input, const std::string& where) {
  Contract c;
  c.present = true;
  ParseNormalisation(input, where, &c);
  const char* size = "a size of whole numbers from 1 to 32768 (shorter_side, or height and width)";
  auto resize = Entry<json::Object>(input, "resize", where, size);
  if (resize.count("shorter_side")) {
    c.shorter_side = int(Positive(resize.at("shorter_side"), where, "resize", kMaxSide, size));
  } else {
    c.resize_height = int(Positive(Field(resize, "height", where), where, "resize", kMaxSide, size));
    c.resize_width = int(Positive(Field(resize, "width", where), where, "resize", kMaxSide, size));
  }
  auto crop = Dims(input, "crop", 2, kMaxSide, where, "[height, width], two positive whole numbers");
  c.crop_height = int(crop[0]);
  c.crop_width = int(crop[1]);
  std::string interpolation = Entry<tvm::ffi::String>(input, "interpolation", where, "a string");
  if (interpolation != "bicubic" && interpolation != "bilinear") {
    throw Error("manifest " + where + ": interpolation " + interpolation +
                " is not supported: give \"bicubic\" or \"bilinear\"");
  }
  c.bicubic = interpolation == "bicubic";
  if (std::string(Entry<tvm::ffi::String>(input, "channel_order", where, "a string")) != "RGB" ||
      std::string(Entry<tvm::ffi::String>(input, "layout", where, "a string")) != "NCHW") {
    throw Error("manifest " + where + ": only RGB channels in NCHW layout are supported: " + kManifestFix);
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
                std::to_string(size_t(3) * c.crop_height * c.crop_width) + ": pass 3 * height * width of the input shape");
  }
  if (image.width <= 0 || image.height <= 0) throw Error("the image is empty: give an image with pixels");
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
                ") is smaller than the crop (the manifest's resize and crop disagree): " + kManifestFix);
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

// An image of more than kMaxPixels would need gigabytes to decode and resize on the board.
void CheckPixels(int64_t width, int64_t height, const std::string& what) {
  if (width * height > kMaxPixels) {
    throw Error(what + " is " + std::to_string(width) + "x" + std::to_string(height) + " pixels, more than the " +
                std::to_string(kMaxPixels >> 20) + " megapixels allowed: downscale it first");
  }
}

#ifdef PARCNET_HAVE_STB_IMAGE
// stb_image's short reason; some are empty (a PNG cut between chunks reads a chunk type of zeros).
std::string StbiReason() {
  const char* reason = stbi_failure_reason();
  return reason != nullptr && reason[0] != '\0' ? reason : "data missing or corrupt";
}
#endif

tvm::runtime::Tensor AsTensor(Any value) {
  if (auto tensor = value.try_cast<tvm::runtime::Tensor>()) return *tensor;
  return value.cast<tvm::ffi::Array<Any>>()[0].cast<tvm::runtime::Tensor>();
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? "x" : "") + std::to_string(shape[i]);
  return text;
}

size_t Elements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

// What the manifest's "params" entry says of the weights file: its bytes and tensor count
// (-1: not said). Both are checked, as they are cheap; its sha256 is not: hashing tens of MB
// would slow every load on the board, and the size and count catch a cut or foreign file.
struct WeightsEntry {
  bool present = false;
  int64_t bytes = -1, tensors = -1;
};

WeightsEntry ParseWeightsEntry(const json::Object& root, const std::string& where) {
  WeightsEntry entry;
  if (!root.count("params")) return entry;  // a library built before the weights left it
  entry.present = true;
  auto params = Entry<json::Object>(root, "params", where, "an object {file, tensors, bytes, sha256}");
  const char* expected = "a whole number";
  if (params.count("bytes")) entry.bytes = Positive(params.at("bytes"), where, "params.bytes", INT64_MAX, expected);
  if (params.count("tensors")) {
    entry.tensors = Positive(params.at("tensors"), where, "params.tensors", INT64_MAX, expected);
  }
  return entry;
}

const char* kWeightsFix = "copy the .params written with this library beside it again, or rebuild the library";

// The weights file beside the library (parcnet_tvm/params.py): a TVM parameter file whose
// tensors, named w0000, w0001, ..., follow the input in main's parameters. TVM reads each
// tensor straight into its own buffer: the weights are held once.
void LoadWeights(const std::string& path, const WeightsEntry& entry, const std::string& manifest,
                 std::vector<Any>* arguments) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    if (entry.present) throw Error("no weights file " + path + ": keep the .params written beside the library");
    return;  // a library built before the weights left it
  }
  const int64_t size = RequireFile(path, "weights file", kWeightsFix);
  if (entry.bytes >= 0 && size != entry.bytes) {
    throw Error("weights file " + path + " has " + std::to_string(size) + " bytes but the manifest " + manifest +
                " says " + std::to_string(entry.bytes) + " (a cut copy, or another library's): " + kWeightsFix);
  }
  tvm::ffi::Map<tvm::ffi::String, tvm::runtime::Tensor> weights;
  try {
    weights = (*Function::GetGlobal("runtime.LoadParamsFromFile"))(path)
                  .cast<tvm::ffi::Map<tvm::ffi::String, tvm::runtime::Tensor>>();
  } catch (const tvm::ffi::Error& err) {
    throw Error("weights file " + path + " is damaged (" + std::string(err.message()) + "): " + kWeightsFix);
  } catch (const std::exception& err) {  // bad_alloc or length_error from a damaged count
    throw Error("weights file " + path + " is damaged (" + err.what() + "): " + kWeightsFix);
  }
  if (entry.tensors >= 0 && int64_t(weights.size()) != entry.tensors) {
    throw Error("weights file " + path + " holds " + std::to_string(weights.size()) + " tensors but the manifest " +
                manifest + " says " + std::to_string(entry.tensors) + " (another library's weights): " + kWeightsFix);
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

// ---- SHA-256 (FIPS 180-4), to tell whether a library is the one its manifest describes. The
// library is small (the weights are in the .params file), so hashing it costs milliseconds.

constexpr uint32_t kSha256K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

// One 64-byte block into the state `h`.
void Sha256Block(const uint8_t* p, uint32_t h[8]) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i) {
    w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
  }
  for (int i = 16; i < 64; ++i) {
    const uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    const uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
  for (int i = 0; i < 64; ++i) {
    const uint32_t t1 = k + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + kSha256K[i] + w[i];
    const uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    k = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
  }
  const uint32_t v[8] = {a, b, c, d, e, f, g, k};
  for (int i = 0; i < 8; ++i) h[i] += v[i];
}

// The lowercase hex digest of `bytes`, as Python's hashlib.sha256(...).hexdigest().
std::string Sha256Hex(const std::string& bytes) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  const size_t whole = bytes.size() / 64 * 64;
  for (size_t i = 0; i < whole; i += 64) Sha256Block(reinterpret_cast<const uint8_t*>(bytes.data()) + i, h);
  // The tail, a 1 bit, zeros, and the length in bits (big-endian) fill one or two last blocks.
  uint8_t tail[128] = {};
  const size_t rest = bytes.size() - whole, blocks = rest < 56 ? 1 : 2;
  std::memcpy(tail, bytes.data() + whole, rest);
  tail[rest] = 0x80;
  const uint64_t bits = uint64_t(bytes.size()) * 8;
  for (int i = 0; i < 8; ++i) tail[blocks * 64 - 1 - i] = uint8_t(bits >> (8 * i));
  for (size_t i = 0; i < blocks; ++i) Sha256Block(tail + 64 * i, h);
  char hex[65];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 8 * i, 9, "%08x", unsigned(h[i]));
  return std::string(hex, 64);
}

// model.so -> model (the manifest and weights are found beside it by name).
std::string Stem(const std::string& path) {
  const size_t slash = path.rfind('/'), dot = path.rfind('.');
  return dot == std::string::npos || (slash != std::string::npos && dot < slash) ? path : path.substr(0, dot);
}

// ---- Loading: the manifest first, then whether the library is the one it describes, then
// the library, then its weights; each step names the file that is wrong.

json::Object ReadManifest(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    throw Error("no manifest " + path + ": keep the .json written beside the library, or name it");
  }
  RequireFile(path, "manifest", "give the .json parcnet-tvm wrote beside the library");
  tvm::ffi::String parse_error;
  Any root = json::Parse(ReadFile(path), &parse_error);
  if (!parse_error.empty()) {
    throw Error("manifest " + path + " is not valid JSON (" + std::string(parse_error) + "): " + kManifestFix);
  }
  auto object = root.try_cast<json::Object>();
  if (!object) throw Error("manifest " + path + " is not a parcnet-tvm manifest (a JSON object): " + kManifestFix);
  return *object;
}

// A manifest written by parcnet-tvm records the library's size ("memory": {"library_bytes"})
// and sha256: a cut or changed library, or another library's manifest, is refused here rather
// than by the loader's vaguer message (or not at all). Manifests without them pass.
void CheckLibraryMatches(const std::string& library, const json::Object& root, const std::string& manifest) {
  const std::string fix = "copy the library and its manifest again together, or rebuild the library";
  const int64_t size = RequireFile(library, "library", "give the .so built by parcnet-tvm");
  if (root.count("memory")) {
    auto memory = Entry<json::Object>(root, "memory", manifest, "an object");
    if (memory.count("library_bytes")) {
      const int64_t expected =
          Positive(memory.at("library_bytes"), manifest, "memory.library_bytes", INT64_MAX, "a whole number");
      if (size != expected) {
        throw Error("library " + library + " has " + std::to_string(size) + " bytes but its manifest " + manifest +
                    " says " + std::to_string(expected) + " (a cut copy, or another library's manifest): " + fix);
      }
    }
  }
  if (!root.count("sha256") || root.at("sha256") == nullptr) return;
  std::string expected = Entry<tvm::ffi::String>(root, "sha256", manifest, "a sha256 hex digest");
  if (Sha256Hex(ReadFile(library)) != expected) {
    throw Error("library " + library + " does not match its manifest " + manifest +
                " (sha256 differs: a changed copy, or another library's manifest): " + fix);
  }
}

// The class names the manifest's output names (a file beside the manifest, one name per line);
// none when it names none (null: a model without ImageNet's classes) or the file is not there.
std::vector<std::string> ReadClassNames(const json::Object& output, const std::string& manifest) {
  std::vector<std::string> names;
  if (!output.count("class_names") || output.at("class_names") == nullptr) return names;
  std::string file = Entry<tvm::ffi::String>(output, "class_names", manifest, "a file name");
  std::string dir = manifest.rfind('/') == std::string::npos ? "" : manifest.substr(0, manifest.rfind('/') + 1);
  std::ifstream in(dir + file);
  for (std::string line; std::getline(in, line);) names.push_back(line);
  return names;
}

// How many bytes an ELF file's headers say it has: its program and section header tables and
// every loaded segment end within it.
template <typename Ehdr, typename Phdr>
uint64_t ElfEnd(std::ifstream& in) {
  Ehdr eh{};
  in.seekg(0);
  in.read(reinterpret_cast<char*>(&eh), sizeof(eh));
  uint64_t end = std::max(uint64_t(eh.e_shoff) + uint64_t(eh.e_shnum) * eh.e_shentsize,
                          uint64_t(eh.e_phoff) + uint64_t(eh.e_phnum) * eh.e_phentsize);
  for (unsigned i = 0; i < eh.e_phnum && in; ++i) {
    Phdr ph{};
    in.seekg(std::streamoff(eh.e_phoff + uint64_t(i) * eh.e_phentsize));
    in.read(reinterpret_cast<char*>(&ph), sizeof(ph));
    if (in && ph.p_type == PT_LOAD) end = std::max(end, uint64_t(ph.p_offset) + ph.p_filesz);
  }
  return end;
}

// A library cut short makes dlopen map pages past the end of the file, and the first touch of
// one kills the process with SIGBUS instead of an error: its ELF headers say how long it must
// be, checked before it is loaded (also when the manifest records no size or sha256).
void CheckElfComplete(const std::string& library) {
  const int64_t size = RequireFile(library, "library", "give the .so built by parcnet-tvm");
  std::ifstream in(library, std::ios::binary);
  unsigned char ident[EI_NIDENT] = {};
  in.read(reinterpret_cast<char*>(ident), EI_NIDENT);
  if (!in || std::memcmp(ident, ELFMAG, SELFMAG) != 0 || ident[EI_DATA] != ELFDATA2LSB) {
    throw Error("library " + library + " is not a shared library for this device: give the .so built by parcnet-tvm");
  }
  const uint64_t end = ident[EI_CLASS] == ELFCLASS64 ? ElfEnd<Elf64_Ehdr, Elf64_Phdr>(in)
                                                     : ElfEnd<Elf32_Ehdr, Elf32_Phdr>(in);
  if (end > uint64_t(size)) {
    throw Error("library " + library + " is cut short (" + std::to_string(size) + " bytes; its ELF headers need " +
                std::to_string(end) + "): copy it again, or rebuild it");
  }
}

// The library's Relax VM `main`, on one CPU device with the pooled allocator (2), as
// tvm.relax.VirtualMachine sets it up.
Function LoadMain(const std::string& library) {
  CheckElfComplete(library);
  Module lib = [&] {
    try {  // dlopen looks for a bare name on the library path, not here: name it ./model.so
      return Module::LoadFromFile(library.find('/') == std::string::npos ? "./" + library : library);
    } catch (const tvm::ffi::Error& err) {
      throw Error("cannot load " + library + " (" + std::string(err.message()) +
                  "): give a complete library built for this device (--target arm for the board)");
    }
  }();
  auto load_executable = lib->GetFunction("vm_load_executable");
  if (!load_executable) throw Error(library + " is not a Relax VM library: build it with parcnet-tvm");
  Module vm = (*load_executable)().cast<Module>();
  (*vm->GetFunction("vm_initialization"))(int(kDLCPU), 0, 2);
  auto main = vm->GetFunction("main");
  if (!main) throw Error(library + " has no main function: build it with parcnet-tvm");
  return *main;
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
    RequireFile(model->library, "library", "check the path of the .so built by parcnet-tvm");
    const std::string stem = Stem(model->library);
    const std::string manifest = manifest_path != nullptr ? std::string(manifest_path) : stem + ".json";
    const json::Object object = ReadManifest(manifest);
    const char* nchw = "4 whole numbers from 1 to 65536 (N, C, H, W)";
    model->input_shape = Dims(object, "input_shape", 4, int64_t(1) << 16, manifest, nchw);
    CheckedElements(model->input_shape, manifest, "input_shape");
    if (object.count("input")) {
      model->contract = ParseContract(Entry<json::Object>(object, "input", manifest, "an object"), manifest);
      if (model->contract.crop_height != model->input_shape[2] || model->contract.crop_width != model->input_shape[3]) {
        throw Error("manifest " + manifest + ": the input's crop is not input_shape's H x W: " + kManifestFix);
      }
    }
    if (object.count("output")) {
      auto output = Entry<json::Object>(object, "output", manifest, "an object");
      model->output_shape = Dims(output, "shape", 2, kMaxElements, manifest, "2 whole numbers (N, classes)");
      CheckedElements(model->output_shape, manifest, "output");
      model->class_names = ReadClassNames(output, manifest);
    }
    CheckLibraryMatches(model->library, object, manifest);
    model->main = LoadMain(model->library);
    model->input = tvm::runtime::Tensor::Empty(tvm::ffi::Shape(model->input_shape), DLDataType{kDLFloat, 32, 1},
                                               DLDevice{kDLCPU, 0});
    model->arguments.push_back(model->input);
    LoadWeights(stem + ".params", ParseWeightsEntry(object, manifest), manifest, &model->arguments);
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
                  std::to_string(Elements(model->input_shape)) + " (float32 " + ShapeText(model->input_shape) +
                  "): pass the whole input shape");
    }
    if (num_threads < 0 || num_threads > kMaxThreads) {
      throw Error("parcnet_run: num_threads is " + std::to_string(num_threads) + ": give 0 (keep the current " +
                  "threads) or 1 to " + std::to_string(kMaxThreads));
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
                  std::to_string(Elements(shape)) + " (" + ShapeText(shape) + "): pass the whole output shape");
    }
    result.CopyToBytes(logits, logits_count * sizeof(float));
  });
}

int parcnet_preprocess_rgb(const parcnet_model* model, const uint8_t* rgb, int width, int height, int row_stride,
                           float* out, size_t out_count) {
  return Guard([&] {
    if (model == nullptr || rgb == nullptr || out == nullptr) throw Error("parcnet_preprocess_rgb: NULL argument");
    if (width <= 0 || height <= 0 || row_stride < 3 * int64_t(width)) {
      throw Error("parcnet_preprocess_rgb: bad image geometry (width " + std::to_string(width) + ", height " +
                  std::to_string(height) + ", row_stride " + std::to_string(row_stride) +
                  "): give width, height > 0 and row_stride >= 3 * width");
    }
    CheckPixels(width, height, "parcnet_preprocess_rgb: the image");
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
    const std::string path = image_path, fix = "give a JPEG, PNG, BMP or PPM file";
    RequireFile(path, "image", fix);
    int w = 0, h = 0, channels = 0;
    // The header first: is it an image at all, and one small enough to decode here?
    if (!stbi_info(image_path, &w, &h, &channels)) {
      // stbi_info's reason is always "unknown image type" (its last guess); loading fails in
      // the header too, with the reason that applies (e.g. "too large").
      stbi_image_free(stbi_load(image_path, &w, &h, &channels, 3));
      throw Error(path + " is not a readable image (" + StbiReason() + "): " + fix);
    }
    CheckPixels(w, h, "image " + path);
    unsigned char* pixels = stbi_load(image_path, &w, &h, &channels, 3);
    if (pixels == nullptr) {
      throw Error("image " + path + " cannot be decoded (" + StbiReason() +
                  "): it is damaged or cut short; copy it again or " + fix);
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
