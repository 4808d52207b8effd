// Arena allocator: hands out memory by bumping an offset inside large pages
// and releases everything at once (RecycleAll keeps the pages for reuse,
// FreeAll returns them to the page allocator). Objects are never destroyed
// individually, so only trivially destructible data should live here.
//
// A PageAllocator provides
//   ArenaPageHeader* allocate(size_t min_bytes);  // page of >= min_bytes bytes
//                                                 // (header included), with
//                                                 // size and offset filled in
//   void deallocate(ArenaPageHeader* page);
//   static constexpr int kPageAlign;              // alignment of page starts
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <cstddef>
#include <new>
#include <utility>

namespace tvm {
namespace support {

// Header placed at the start of every page.
struct ArenaPageHeader {
  ArenaPageHeader* next;  // next page in the same list
  size_t size;            // total page size in bytes, header included
  size_t offset;          // first free byte, measured from the page start
};

template <typename PageAllocator>
class GenericArena {
 public:
  explicit GenericArena(PageAllocator alloc = PageAllocator()) : alloc_(std::move(alloc)) {}
  ~GenericArena() { FreeAll(); }

  GenericArena(const GenericArena&) = delete;
  GenericArena& operator=(const GenericArena&) = delete;

  // Returns every page to the page allocator. The arena stays usable.
  void FreeAll() {
    ReleaseList(&used_);
    ReleaseList(&free_);
  }

  // Invalidates all allocations but keeps the pages for later requests.
  void RecycleAll() {
    while (used_ != nullptr) {
      ArenaPageHeader* page = used_;
      used_ = page->next;
      page->next = free_;
      free_ = page;
    }
  }

  // Uninitialized storage for `count` objects of type T.
  template <typename T>
  T* allocate_(int count = 1) {
    static_assert(PageAllocator::kPageAlign % alignof(T) == 0,
                  "type alignment exceeds the arena page alignment");
    size_t n = count > 0 ? static_cast<size_t>(count) : 0;
    if (n > kMaxBytes / sizeof(T)) throw std::bad_alloc();
    return static_cast<T*>(Alloc(sizeof(T) * n, alignof(T)));
  }

  // Constructs a T in arena memory (its destructor will never run).
  template <typename T, typename... Args>
  T* make(Args&&... args) {
    return new (allocate_<T>()) T(std::forward<Args>(args)...);
  }

 private:
  // Upper bound on one request, leaving headroom for the header and rounding.
  static constexpr size_t kMaxBytes = static_cast<size_t>(-1) / 2;

  static size_t AlignUp(size_t value, size_t align) { return (value + align - 1) / align * align; }

  // Carves `size` bytes from `page` if they fit, else returns nullptr.
  static void* TryCarve(ArenaPageHeader* page, size_t size, size_t align) {
    size_t start = AlignUp(page->offset, align);
    if (start > page->size || size > page->size - start) return nullptr;
    page->offset = start + size;
    return reinterpret_cast<char*>(page) + start;
  }

  void* Alloc(size_t size, size_t align) {
    if (used_ != nullptr) {
      if (void* p = TryCarve(used_, size, align)) return p;
    }
    if (size > kMaxBytes) throw std::bad_alloc();
    size_t need = AlignUp(sizeof(ArenaPageHeader), align) + size;
    // Reuse a recycled page that is large enough, else get a fresh one.
    ArenaPageHeader* page = nullptr;
    for (ArenaPageHeader** link = &free_; *link != nullptr; link = &(*link)->next) {
      if ((*link)->size >= need) {
        page = *link;
        *link = page->next;
        break;
      }
    }
    if (page == nullptr) page = alloc_.allocate(need);
    page->offset = sizeof(ArenaPageHeader);
    page->next = used_;
    used_ = page;
    return TryCarve(page, size, align);
  }

  void ReleaseList(ArenaPageHeader** list) {
    while (*list != nullptr) {
      ArenaPageHeader* page = *list;
      *list = page->next;
      alloc_.deallocate(page);
    }
  }

  PageAllocator alloc_;
  ArenaPageHeader* used_{nullptr};  // pages holding live allocations, newest first
  ArenaPageHeader* free_{nullptr};  // recycled pages
};

// Page allocator backed by aligned operator new.
class SimplePageAllocator {
 public:
  static constexpr size_t kPageSize = 16 << 10;
  static constexpr int kPageAlign = 64;

  ArenaPageHeader* allocate(size_t min_bytes) {
    size_t bytes = (min_bytes + kPageSize - 1) / kPageSize * kPageSize;
    if (bytes == 0) bytes = kPageSize;
    void* mem = ::operator new(bytes, std::align_val_t(kPageAlign));
    ArenaPageHeader* page = static_cast<ArenaPageHeader*>(mem);
    page->next = nullptr;
    page->size = bytes;
    page->offset = sizeof(ArenaPageHeader);
    return page;
  }

  void deallocate(ArenaPageHeader* page) {
    ::operator delete(static_cast<void*>(page), std::align_val_t(kPageAlign));
  }
};

using Arena = GenericArena<SimplePageAllocator>;

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
