// parcnet_runner: run a ParCNetV2 library built by parcnet-tvm on the board, through the C API
// of parcnet.h (libparcnet.so).
//
//   parcnet_runner MODEL.so --input IMAGE_OR_RAW [--manifest MODEL.json] [--output OUT.raw]
//                  [--save-input IN.raw] [--repeat N] [--top K] [--threads N]
//
// The input is a raw float32 file in the model's input shape (NCHW), or an image file
// (JPEG/PNG/BMP/PPM) preprocessed by the manifest's input contract (the official evaluation:
// resize, centre crop, normalise); --save-input writes what the model was given.
// The manifest defaults to the one beside the library (MODEL.json).
// Prints the top-K classes with their names (K from 0 to 1000000); --output writes the logits
// as raw float32; --repeat N (1 to 1000000) times N runs after one warm-up and prints median
// and p90 latency, measured on this machine. --threads N (1 to 64) runs the kernels on N
// threads (default: one per core).
// Any bad argument or input prints one "error: <what is wrong>: <how to fix>" line and exits
// with status 1.
// The timed runs are bracketed by prctl markers that the RK3288 estimate's qemu plugin
// (parcnet_tvm/arm_counter) counts between; on a real kernel they fail with EINVAL, harmlessly.

#include <dlfcn.h>
#include <link.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "parcnet.h"

namespace {

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct HelpAsked {};  // -h: the usage on stdout, status 0

struct Options {
  std::string library, manifest, input, output, save_input;
  int repeat = 0, top = 5, threads = 0;  // 0: no timed runs; one thread per core
};

constexpr const char* kUsage =
    "usage: parcnet_runner MODEL.so --input IMAGE_OR_RAW [--manifest MODEL.json] [--output OUT.raw] "
    "[--save-input IN.raw] [--repeat N] [--top K] [--threads N]";

[[noreturn]] void Usage(const std::string& what) { throw Failure(what + ": " + kUsage); }

// A whole number from `low` to `high`, written in digits only. Anything else (a word, a sign,
// a fraction, a count past the range) is refused with the range rather than run with a
// surprising count: 0 threads, a million threads, a negative repeat.
int Count(const std::string& option, const std::string& text, int low, int high, const char* example) {
  const bool digits = !text.empty() && text.size() <= 9 &&
                      std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isdigit(c); });
  const long value = digits ? std::stol(text) : -1;
  if (digits && value >= low && value <= high) return int(value);
  throw Failure(option + " takes a count from " + std::to_string(low) + " to " + std::to_string(high) + ", not \"" +
                text + "\": give a whole number in that range, e.g. " + example);
}

Options ParseArgs(int argc, char** argv) {
  Options opt;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc || argv[i + 1][0] == '\0') Usage(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") opt.input = value();
    else if (arg == "--manifest") opt.manifest = value();
    else if (arg == "--output") opt.output = value();
    else if (arg == "--save-input") opt.save_input = value();
    else if (arg == "--repeat") opt.repeat = Count(arg, value(), 1, 1000000, "--repeat 50 (leave it out to skip timing)");
    else if (arg == "--top") opt.top = Count(arg, value(), 0, 1000000, "--top 5 (0 prints no classes)");
    else if (arg == "--threads") opt.threads = Count(arg, value(), 1, 64, "--threads 4 (leave it out for one per core)");
    else if (arg == "-h" || arg == "--help") throw HelpAsked{};
    else if (!arg.empty() && arg[0] == '-') Usage("unknown option " + arg);
    else if (opt.library.empty()) opt.library = arg;
    else Usage("a second model " + arg + " (the first is " + opt.library + ")");
  }
  if (opt.library.empty()) Usage("no MODEL.so given");
  if (opt.input.empty()) Usage("no --input given");
  return opt;
}

// Where --output or --save-input will write must be a file in an existing folder: checked
// before the model runs, so a typo does not cost a run (minutes on an emulated board).
void CheckWritable(const std::string& option, const std::string& path) {
  if (path.empty()) return;
  struct stat st {};
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw Failure(option + " " + path + " is a folder: give a file name, e.g. " + path + "/out.raw");
  }
  const auto slash = path.rfind('/');
  const std::string folder = slash == std::string::npos ? "." : path.substr(0, slash + (slash == 0));
  if (stat(folder.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw Failure(option + " " + path + " is in a folder that does not exist (" + folder +
                  "): create it, or write elsewhere");
  }
}

void Check(int status) {
  if (status != 0) throw Failure(parcnet_error());
}

bool IsRaw(const std::string& path) {
  auto dot = path.rfind('.');
  std::string ext = dot == std::string::npos ? "" : path.substr(dot + 1);
  return ext == "raw" || ext == "bin" || ext == "f32";
}

void WriteFloats(const std::string& path, const std::vector<float>& data) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data.data()), std::streamsize(data.size() * sizeof(float)));
  if (!f) throw Failure("cannot write " + path + ": check that the disk has room and the file is writable");
}

// The input file's size, after checking it is a file at all.
int64_t InputSize(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) throw Failure("input " + path + " does not exist: check the path");
  if (!S_ISREG(st.st_mode)) {
    throw Failure("input " + path + " is not a file: give an image, or raw float32 named .raw, .bin or .f32");
  }
  return int64_t(st.st_size);
}

std::vector<float> LoadInput(parcnet_model* model, const std::string& path, const int64_t shape[4]) {
  const int64_t size = InputSize(path);
  const size_t image = size_t(shape[1] * shape[2] * shape[3]), count = image * size_t(shape[0]);
  std::vector<float> data(count);
  if (!IsRaw(path)) {
    Check(parcnet_preprocess_file(model, path.c_str(), data.data(), image));
    for (int64_t n = 1; n < shape[0]; ++n) std::copy_n(data.begin(), image, data.begin() + n * image);
    return data;  // the same image for every batch entry
  }
  if (size != int64_t(count * sizeof(float))) {  // checked before reading: a huge file is not read
    throw Failure("input " + path + " has " + std::to_string(size) + " bytes; the model takes " +
                  std::to_string(count * sizeof(float)) + " (float32, shape " + std::to_string(shape[0]) + "x" +
                  std::to_string(shape[1]) + "x" + std::to_string(shape[2]) + "x" + std::to_string(shape[3]) +
                  "): give raw float32 of exactly that shape, or an image");
  }
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(data.data()), std::streamsize(count * sizeof(float)));
  if (!in) throw Failure("cannot read input " + path + ": check its permissions");
  return data;
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

double Percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = q * double(v.size() - 1);
  size_t lo = size_t(pos), hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - double(lo));
}

int Run(const Options& opt, parcnet_model** model_out) {
  InputSize(opt.input);  // before the model loads: a wrong path is told at once
  CheckWritable("--output", opt.output);
  CheckWritable("--save-input", opt.save_input);
  Check(parcnet_load(opt.library.c_str(), opt.manifest.empty() ? nullptr : opt.manifest.c_str(), model_out));
  parcnet_model* model = *model_out;
  int64_t in_shape[4], out_shape[2];
  Check(parcnet_input_shape(model, in_shape));
  Check(parcnet_output_shape(model, out_shape));
  std::vector<float> input = LoadInput(model, opt.input, in_shape);
  if (!opt.save_input.empty()) WriteFloats(opt.save_input, input);
  std::vector<float> logits(size_t(out_shape[0] * out_shape[1]));
  Check(parcnet_run(model, input.data(), input.size(), logits.data(), logits.size(), opt.threads));
  if (!opt.output.empty()) WriteFloats(opt.output, logits);

  const size_t classes = size_t(out_shape[1]), k = std::min<size_t>(size_t(opt.top), classes);
  std::vector<size_t> order(classes);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](size_t a, size_t b) { return logits[a] > logits[b]; });
  std::printf("top-%zu (image 0): class logit name\n", k);
  for (size_t i = 0; i < k; ++i) {
    const char* name = parcnet_class_name(model, int(order[i]));
    std::printf("  %zu %.6f %s\n", order[i], logits[order[i]], name ? name : "");
  }

  if (opt.repeat > 0) {
    std::vector<double> ms;
    MarkLibraryBase(opt.library);
    prctl(kCounterMarker, 1UL, 0UL, 0UL, 0UL);
    for (int i = 0; i < opt.repeat; ++i) {
      auto start = std::chrono::steady_clock::now();
      Check(parcnet_run(model, input.data(), input.size(), logits.data(), logits.size(), 0));
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
  parcnet_model* model = nullptr;
  int status = 1;
  try {
    status = Run(ParseArgs(argc, argv), &model);
  } catch (const HelpAsked&) {
    std::printf("%s\n", kUsage);
    status = 0;
  } catch (const std::exception& err) {
    std::fprintf(stderr, "error: %s\n", err.what());
  }
  parcnet_free(model);
  return status;
}
