// C ABI over PyTorch's distributed engine (c10d) as libtorch_cpu exports it: TCPStore and
// PrefixStore for the rendezvous, ProcessGroupGloo for the collectives (CPU tensors, and CUDA
// tensors staged through the host). src/dist.rs is the safe Rust side.
//
// As in shim.cpp, every function returns NULL or a malloc'ed error message; no exception
// crosses into Rust. Handles are heap objects owned by Rust (freed with the *_free functions).
//
// ProcessGroupGloo.hpp includes gloo headers that the torch wheel does not ship:
// gloo_decl/gloo/ declares the few gloo names it mentions (see the README there).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "protect.h"

struct TorchextStore {
  c10::intrusive_ptr<c10d::Store> store;
};

struct TorchextGroup {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

namespace {

using std::chrono::milliseconds;

// Reduction codes: 0 = SUM, 1 = MAX.
c10d::ReduceOp reduce_op(int code) {
  switch (code) {
  case 0:
    return c10d::ReduceOp::SUM;
  case 1:
    return c10d::ReduceOp::MAX;
  default:
    throw std::invalid_argument("torchext: unknown reduction code");
  }
}

// Waits for every launched collective (all are in flight at once); the first failure throws
// after the remaining ones were waited for, so no work outlives its tensors.
void wait_all(std::vector<c10::intrusive_ptr<c10d::Work>> &works,
              milliseconds timeout) {
  std::exception_ptr first;
  for (auto &work : works) {
    try {
      work->wait(timeout);
    } catch (...) {
      if (!first) {
        first = std::current_exception();
      }
    }
  }
  if (first) {
    std::rethrow_exception(first);
  }
}

} // namespace

extern "C" {

// A TCPStore client of host:port (and its server when is_server), as torch.distributed's
// env:// rendezvous makes it (world_size workers, multi-tenant), optionally under a prefix.
char *torchext_store_tcp(const char *host, uint16_t port, bool is_server,
                         int world_size, int64_t timeout_ms,
                         const char *prefix, TorchextStore **out) {
  TORCHEXT_PROTECT({
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server;
    if (world_size > 0) {
      opts.numWorkers = static_cast<size_t>(world_size);
    }
    // a server without a known world (a stand-alone store) does not wait for workers
    opts.waitWorkers = world_size > 0;
    opts.timeout = milliseconds(timeout_ms);
    opts.multiTenant = true;
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    if (prefix != nullptr) {
      store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), store);
    }
    *out = new TorchextStore{store};
  })
}

char *torchext_store_set(TorchextStore *s, const char *key, const uint8_t *data,
                         size_t n) {
  TORCHEXT_PROTECT({
    std::vector<uint8_t> value(data, data + n);
    s->store->set(std::string(key), value);
  })
}

// Waits (up to the store's timeout) for key and returns its value, malloc'ed.
char *torchext_store_get(TorchextStore *s, const char *key, uint8_t **data,
                         size_t *n) {
  TORCHEXT_PROTECT({
    std::vector<uint8_t> value = s->store->get(std::string(key));
    *n = value.size();
    *data = static_cast<uint8_t *>(std::malloc(value.empty() ? 1 : value.size()));
    if (*data == nullptr) {
      throw std::bad_alloc();
    }
    std::memcpy(*data, value.data(), value.size());
  })
}

char *torchext_store_add(TorchextStore *s, const char *key, int64_t delta,
                         int64_t *out) {
  TORCHEXT_PROTECT({ *out = s->store->add(std::string(key), delta); })
}

// Whether key is set, without waiting.
char *torchext_store_check(TorchextStore *s, const char *key, bool *out) {
  TORCHEXT_PROTECT({ *out = s->store->check({std::string(key)}); })
}

void torchext_store_free(TorchextStore *s) { delete s; }

void torchext_free_bytes(uint8_t *data) { std::free(data); }

// A Gloo process group of `size` ranks over the store, with one transport device: the
// interface `ifname` when given (GLOO_SOCKET_IFNAME), else the address this machine's
// hostname resolves to (loopback when it does not), as torch.distributed does.
char *torchext_group_gloo(TorchextStore *s, int rank, int size,
                          int64_t timeout_ms, const char *ifname,
                          TorchextGroup **out) {
  TORCHEXT_PROTECT({
    auto opts = c10d::ProcessGroupGloo::Options::create(milliseconds(timeout_ms));
    if (ifname != nullptr) {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(std::string(ifname)));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 2;
    c10::intrusive_ptr<c10d::Backend> backend =
        c10::make_intrusive<c10d::ProcessGroupGloo>(s->store, rank, size, opts);
    *out = new TorchextGroup{backend, milliseconds(timeout_ms)};
  })
}

// One all-reduce per tensor, in place, all in flight together.
char *torchext_group_allreduce(TorchextGroup *g, at::Tensor **ts, size_t n,
                               int op) {
  TORCHEXT_PROTECT({
    c10d::AllreduceOptions opts;
    opts.reduceOp = reduce_op(op);
    opts.timeout = g->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(g->backend->allreduce(one, opts));
    }
    wait_all(works, g->timeout);
  })
}

// One broadcast from `root` per tensor, in place, all in flight together.
char *torchext_group_broadcast(TorchextGroup *g, at::Tensor **ts, size_t n,
                               int root) {
  TORCHEXT_PROTECT({
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = g->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      std::vector<at::Tensor> one{*ts[i]};
      works.push_back(g->backend->broadcast(one, opts));
    }
    wait_all(works, g->timeout);
  })
}

char *torchext_group_barrier(TorchextGroup *g) {
  TORCHEXT_PROTECT({
    c10d::BarrierOptions opts;
    opts.timeout = g->timeout;
    std::vector<c10::intrusive_ptr<c10d::Work>> works{g->backend->barrier(opts)};
    wait_all(works, g->timeout);
  })
}

void torchext_group_free(TorchextGroup *g) { delete g; }

} // extern "C"
