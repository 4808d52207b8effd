// Growable FIFO byte ring used to buffer RPC channel traffic.
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  static constexpr size_t kInitCapacity = 4 << 10;

  RingBuffer() : ring_(kInitCapacity) {}

  // Number of buffered bytes.
  size_t bytes_available() const { return size_; }
  // Current storage size.
  size_t capacity() const { return ring_.size(); }

  // Makes room for at least `n` buffered bytes. A buffer that is far larger
  // than needed (more than 8x, above the initial size) is shrunk again so a
  // single large message does not pin memory on small devices.
  void Reserve(size_t n) {
    size_t cap = ring_.size();
    if (n > cap) {
      Relayout(std::max(n, cap + cap / 2));
    } else if (cap > kInitCapacity && cap / 8 > n) {
      Relayout(std::max({kInitCapacity, n, size_}));
    }
  }

  // Removes `size` bytes (which must be buffered) into `data`.
  void Read(void* data, size_t size) {
    TVM_FFI_ICHECK_LE(size, size_) << "RingBuffer: read past the buffered data";
    if (size == 0) return;
    char* out = static_cast<char*>(data);
    size_t first = std::min(size, ring_.size() - head_);
    std::memcpy(out, ring_.data() + head_, first);
    if (first < size) std::memcpy(out + first, ring_.data(), size - first);
    Consume(size);
  }

  // Passes up to `max_nbytes` buffered bytes to `fsend(const void*, size_t)`,
  // which returns how many it accepted (at most two calls, one per contiguous
  // piece; the second only if the first piece was taken whole). Returns the
  // number of bytes removed from the buffer.
  template <typename FSend>
  size_t ReadWithCallback(FSend fsend, size_t max_nbytes) {
    size_t want = std::min(max_nbytes, size_);
    TVM_FFI_ICHECK_NE(want, 0U) << "RingBuffer: nothing to read";
    size_t first = std::min(want, ring_.size() - head_);
    size_t sent = fsend(static_cast<const void*>(ring_.data() + head_), first);
    if (sent == first && first < want) {
      sent += fsend(static_cast<const void*>(ring_.data()), want - first);
    }
    Consume(sent);
    return sent;
  }

  // Appends `size` bytes, growing the buffer as needed.
  void Write(const void* data, size_t size) {
    if (size == 0) return;
    Reserve(size_ + size);
    const char* in = static_cast<const char*>(data);
    size_t tail = Tail();
    size_t first = std::min(size, ring_.size() - tail);
    std::memcpy(ring_.data() + tail, in, first);
    if (first < size) std::memcpy(ring_.data(), in + first, size - first);
    size_ += size;
  }

  // Lets `frecv(void*, size_t)` fill up to `max_nbytes` bytes at the end of the
  // buffer; it returns how many it produced (at most two calls, as above).
  // Returns the number of bytes appended.
  template <typename FRecv>
  size_t WriteWithCallback(FRecv frecv, size_t max_nbytes) {
    Reserve(size_ + max_nbytes);
    size_t tail = Tail();
    size_t first = std::min(max_nbytes, tail >= head_ && size_ != ring_.size()
                                            ? ring_.size() - tail
                                            : head_ - tail);
    size_t got = frecv(static_cast<void*>(ring_.data() + tail), first);
    size_ += got;
    if (got == first && first < max_nbytes) {
      size_t more = frecv(static_cast<void*>(ring_.data()), max_nbytes - first);
      size_ += more;
      got += more;
    }
    return got;
  }

 private:
  // Index one past the last buffered byte (wrapped).
  size_t Tail() const {
    size_t t = head_ + size_;
    return t >= ring_.size() ? t - ring_.size() : t;
  }

  void Consume(size_t n) {
    size_ -= n;
    head_ = size_ == 0 ? 0 : (head_ + n) % ring_.size();
  }

  // Moves the buffered bytes to the front of a new storage of `new_cap` bytes.
  void Relayout(size_t new_cap) {
    std::vector<char> next(new_cap);
    size_t first = std::min(size_, ring_.size() - head_);
    std::memcpy(next.data(), ring_.data() + head_, first);
    if (first < size_) std::memcpy(next.data() + first, ring_.data(), size_ - first);
    ring_.swap(next);
    head_ = 0;
  }

  std::vector<char> ring_;
  size_t head_{0};  // index of the oldest buffered byte
  size_t size_{0};  // number of buffered bytes
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
