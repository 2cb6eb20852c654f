#include "parallel/nccl_moe.h"

#include <cuda_runtime.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cuda/kernels.h"

namespace dsv4 {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("MoE exchange: ", what, ": ", cudaGetErrorString(e)));
}

// Byte counts and displacements of `rows` rows of `row_bytes` per peer.
void Bytes(const std::vector<int64_t>& rows, int64_t row_bytes, std::vector<int64_t>& bytes,
           std::vector<int64_t>& displs) {
  bytes.resize(rows.size()), displs.resize(rows.size());
  int64_t off = 0;
  for (size_t p = 0; p < rows.size(); ++p) bytes[p] = rows[p] * row_bytes, displs[p] = off, off += bytes[p];
}

}  // namespace

NcclMoeExchange::~NcclMoeExchange() {
  if (pinned_ != nullptr) cudaFreeHost(pinned_);
}

absl::Status NcclMoeExchange::EnsurePinned(int64_t bytes) {
  if (bytes <= pinned_bytes_) return absl::OkStatus();
  if (pinned_ != nullptr) cudaFreeHost(pinned_);
  pinned_ = nullptr, pinned_bytes_ = 0;
  DSV4_RETURN_IF_ERROR(Cuda(cudaMallocHost(&pinned_, static_cast<size_t>(bytes)), "pinned staging"));
  pinned_bytes_ = bytes;
  return absl::OkStatus();
}

template <typename T>
T* NcclMoeExchange::Take(int64_t count) {
  return pool_->AllocateArray<T>(count > 0 ? count : 1);
}

template <typename T>
absl::Status NcclMoeExchange::Upload(const std::vector<T>& host, T** dev, cudaStream_t stream) {
  *dev = Take<T>(static_cast<int64_t>(host.size()));
  if (*dev == nullptr) return absl::ResourceExhaustedError("MoE exchange: workspace pool too small");
  if (host.empty()) return absl::OkStatus();
  return Cuda(cudaMemcpyAsync(*dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice, stream), "upload");
}

absl::Status NcclMoeExchange::Dispatch(const ExpertPlacement& placement, const float* x, int64_t n, int64_t D,
                                       const int32_t* experts, const float* weights, int K, cudaStream_t stream) {
  n_ = n, D_ = D;
  // The previous micro-batch on this stream is done before its workspace is reused (bounded wait).
  DSV4_RETURN_IF_ERROR(comm_->Synchronize(stream));
  pool_->Reset();
  const int ep = comm_->size();
  if (placement.ep() != ep) return absl::InvalidArgumentError("MoE exchange: placement and communicator sizes differ");
  DSV4_RETURN_IF_ERROR(PlanMoeSend(placement, experts, weights, n, K, comm_->rank(), send_));

  // 1. Counts: one int64 per peer each way.
  std::vector<int64_t> ones(ep, 1), cnt_bytes, cnt_displs;
  Bytes(ones, sizeof(int64_t), cnt_bytes, cnt_displs);
  int64_t *dev_send_count = nullptr, *dev_recv_count = Take<int64_t>(ep);
  DSV4_RETURN_IF_ERROR(Upload(send_.send_count, &dev_send_count, stream));
  if (dev_recv_count == nullptr) return absl::ResourceExhaustedError("MoE exchange: workspace pool too small");
  if (auto st = comm_->AllToAllVAsync(dev_send_count, cnt_bytes.data(), cnt_displs.data(), dev_recv_count,
                                      cnt_bytes.data(), cnt_displs.data(), stream);
      !st.ok())
    return st;
  DSV4_RETURN_IF_ERROR(EnsurePinned(ep * static_cast<int64_t>(sizeof(int64_t))));
  if (auto st = Cuda(cudaMemcpyAsync(pinned_, dev_recv_count, ep * sizeof(int64_t), cudaMemcpyDeviceToHost, stream),
                     "counts");
      !st.ok())
    return st;
  DSV4_RETURN_IF_ERROR(comm_->Synchronize(stream));
  recv_count_.assign(static_cast<const int64_t*>(pinned_), static_cast<const int64_t*>(pinned_) + ep);
  int64_t received = 0;
  for (int64_t c : recv_count_) received += c;

  // 2. Records: K expert ids then K weights per token (4-byte words, MoeSendPlan::meta).
  const int64_t rec = 2 * static_cast<int64_t>(K);
  int32_t *dev_records = nullptr, *dev_recv_records = Take<int32_t>(received * rec);
  DSV4_RETURN_IF_ERROR(Upload(send_.meta, &dev_records, stream));
  if (dev_recv_records == nullptr) return absl::ResourceExhaustedError("MoE exchange: workspace pool too small");
  std::vector<int64_t> sb, sd, rb, rd;
  Bytes(send_.send_count, rec * 4, sb, sd);
  Bytes(recv_count_, rec * 4, rb, rd);
  if (auto st = comm_->AllToAllVAsync(dev_records, sb.data(), sd.data(), dev_recv_records, rb.data(), rd.data(), stream);
      !st.ok())
    return st;
  DSV4_RETURN_IF_ERROR(EnsurePinned(received * rec * 4));
  if (received > 0) {
    if (auto st = Cuda(cudaMemcpyAsync(pinned_, dev_recv_records, received * rec * 4, cudaMemcpyDeviceToHost, stream),
                       "records");
        !st.ok())
      return st;
  }

  DSV4_RETURN_IF_ERROR(comm_->Synchronize(stream));  // the records are on the host now
  DSV4_ASSIGN_OR_RETURN(groups_, PlanExpertGroups(placement, comm_->rank(), static_cast<const int32_t*>(pinned_),
                                                  received, K));

  // Every plan array goes up now, while the stream is idle: copies from pageable memory wait for the
  // stream, so none may follow the rows in flight.
  int64_t *dev_tokens = nullptr, *dev_row_token = nullptr;
  DSV4_RETURN_IF_ERROR(Upload(send_.token, &dev_tokens, stream));
  DSV4_RETURN_IF_ERROR(Upload(groups_.row_token, &dev_row_token, stream));
  DSV4_RETURN_IF_ERROR(Upload(groups_.offsets, &dev_offsets_, stream));
  DSV4_RETURN_IF_ERROR(Upload(groups_.row_weight, &dev_row_weight_, stream));
  for (auto [host, dev] : {std::pair{&groups_.sum_offset, &sum_offset_}, std::pair{&groups_.sum_rows, &sum_rows_},
                           std::pair{&send_.combine_offset, &combine_offset_},
                           std::pair{&send_.combine_rows, &combine_rows_}})
    DSV4_RETURN_IF_ERROR(Upload(*host, dev, stream));
  float* packed = Take<float>(send_.total() * D);
  received_ = Take<float>(received * D);
  grouped_ = Take<float>(groups_.rows() * D);
  summed_ = Take<float>(received * D);
  returned_ = Take<float>(send_.total() * D);
  if (packed == nullptr || received_ == nullptr || grouped_ == nullptr || summed_ == nullptr || returned_ == nullptr)
    return absl::ResourceExhaustedError("MoE exchange: workspace pool too small");

  // 3. Hidden rows, packed peer by peer, exchanged, regrouped by expert: all left in flight.
  if (auto st = Cuda(kernels::cuda::GatherRows(x, D * 4, dev_tokens, send_.total(), D * 4, packed, D * 4, stream),
                     "pack");
      !st.ok())
    return st;
  Bytes(send_.send_count, D * 4, sb, sd);
  Bytes(recv_count_, D * 4, rb, rd);
  DSV4_RETURN_IF_ERROR(comm_->AllToAllVAsync(packed, sb.data(), sd.data(), received_, rb.data(), rd.data(), stream));
  return Cuda(kernels::cuda::GatherRows(received_, D * 4, dev_row_token, groups_.rows(), D * 4, grouped_, D * 4, stream),
              "regroup");
}

absl::Status NcclMoeExchange::Combine(const float* y_rows, float* out, cudaStream_t stream) {
  const int64_t D = D_;
  int64_t received = 0;
  for (int64_t c : recv_count_) received += c;
  if (auto st = Cuda(kernels::cuda::CombineRows(y_rows, D, sum_offset_, sum_rows_, nullptr, received, D, false, summed_,
                                                D, stream),
                     "sum per token");
      !st.ok())
    return st;
  std::vector<int64_t> sb, sd, rb, rd;
  Bytes(recv_count_, D * 4, sb, sd);
  Bytes(send_.send_count, D * 4, rb, rd);
  DSV4_RETURN_IF_ERROR(comm_->AllToAllVAsync(summed_, sb.data(), sd.data(), returned_, rb.data(), rd.data(), stream));
  return Cuda(kernels::cuda::CombineRows(returned_, D, combine_offset_, combine_rows_, nullptr, n_, D, true, out, D,
                                         stream),
              "combine");
}

}  // namespace dsv4
