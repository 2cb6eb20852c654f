#include "rpc/control_plane.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "rpc/grpc_status.h"
#include "rpc/listener.h"

namespace dsv4 {
namespace {

const char* RankStateName(int s) {
  static const char* kNames[] = {"absent", "joined", "alive", "left", "lost"};
  return kNames[s];
}

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMicroseconds(d);
}

}  // namespace

// ---- Coordinator --------------------------------------------------------------------------------

Coordinator::Coordinator(CoordinatorOptions options, CoordinatorCallbacks callbacks)
    : opt_(std::move(options)), cb_(std::move(callbacks)), ranks_(std::max(1, opt_.world_size)) {
  ranks_[0].state = RankState::kAlive;  // the leader itself
  watchdog_ = std::thread([this] { Watchdog(); });
}

Coordinator::~Coordinator() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  watchdog_.join();
}

void Coordinator::Watchdog() {
  absl::MutexLock l(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(100));
    const absl::Time now = absl::Now();
    for (int r = 1; r < static_cast<int>(ranks_.size()); ++r)
      if ((ranks_[r].state == RankState::kJoined || ranks_[r].state == RankState::kAlive) &&
          now - ranks_[r].last_beat > opt_.heartbeat_timeout)
        Lost(r, absl::StrCat("no heartbeat for ", absl::FormatDuration(now - ranks_[r].last_beat), " (timeout ",
                             absl::FormatDuration(opt_.heartbeat_timeout), ")"));
  }
}

void Coordinator::Lost(int rank, const std::string& why) {
  Rank& r = ranks_[rank];
  r.state = RankState::kLost;
  const absl::Status st = absl::UnavailableError(
      absl::StrCat("rank ", rank, " (", r.join.host(), ", pid ", r.join.pid(), ") was lost: ", why));
  if (error_.empty()) error_ = std::string(st.message());
  if (lost_reported_) return;
  lost_reported_ = true;
  if (cb_.on_rank_lost) cb_.on_rank_lost(st);
}

void Coordinator::SetError(const std::string& reason) {
  absl::MutexLock l(&mu_);
  if (error_.empty()) error_ = reason;
}

absl::Status Coordinator::WaitForRanks(absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!join_error_.ok()) return true;
    for (const Rank& r : ranks_)
      if (r.state == RankState::kAbsent) return false;
    return true;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    std::vector<int> missing;
    for (int r = 0; r < static_cast<int>(ranks_.size()); ++r)
      if (ranks_[r].state == RankState::kAbsent) missing.push_back(r);
    return absl::DeadlineExceededError(absl::StrCat("rank(s) ", absl::StrJoin(missing, ", "),
                                                    " did not join the control plane within ",
                                                    absl::FormatDuration(timeout)));
  }
  return join_error_;
}

absl::Status Coordinator::WaitForRanksToLeave(absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (size_t r = 1; r < ranks_.size(); ++r)
      if (ranks_[r].state == RankState::kJoined || ranks_[r].state == RankState::kAlive) return false;
    return true;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout))
    return absl::DeadlineExceededError("some ranks did not leave the control plane in time");
  return absl::OkStatus();
}

grpc::Status Coordinator::Join(grpc::ServerContext*, const v1::JoinRequest* req, v1::JoinResponse* resp) {
  absl::MutexLock l(&mu_);
  absl::Status st;
  const int rank = req->rank();
  if (req->world_size() != opt_.world_size)
    st = absl::FailedPreconditionError(absl::StrCat("rank ", rank, " runs in a world of ", req->world_size(),
                                                    " ranks, the leader in one of ", opt_.world_size));
  else if (rank < 1 || rank >= opt_.world_size)
    st = absl::FailedPreconditionError(absl::StrCat("rank ", rank, " is not a worker rank of this job"));
  else if (req->build_id() != opt_.build_id)
    st = absl::FailedPreconditionError(absl::StrCat("rank ", rank, " runs build ", req->build_id(),
                                                    " but the leader runs build ", opt_.build_id,
                                                    ": every rank must run the same dsv4 binary"));
  else if (req->config_digest() != opt_.config_digest)
    st = absl::FailedPreconditionError(absl::StrCat("rank ", rank, " loaded a model with config digest ",
                                                    req->config_digest(), " but the leader's is ", opt_.config_digest,
                                                    ": every rank must load the same model and settings"));
  else if (req->layout() != opt_.layout)
    st = absl::FailedPreconditionError(
        absl::StrCat("rank ", rank, " has layout ", req->layout(), " but the leader has ", opt_.layout));
  else if (ranks_[rank].state != RankState::kAbsent)
    st = absl::FailedPreconditionError(absl::StrCat("rank ", rank, " joined twice"));
  if (!st.ok()) {
    if (join_error_.ok()) join_error_ = st;
    if (error_.empty()) error_ = std::string(st.message());
    return ToGrpcStatus(st);
  }
  Rank& r = ranks_[rank];
  r.state = RankState::kJoined;
  r.join = *req;
  r.last_beat = absl::Now();
  resp->set_heartbeat_interval_ms(absl::ToInt64Milliseconds(opt_.heartbeat_interval));
  resp->set_heartbeat_timeout_ms(absl::ToInt64Milliseconds(opt_.heartbeat_timeout));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Heartbeat(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::BeatAck, v1::Beat>* stream) {
  int rank = -1;
  bool left = false;
  v1::Beat beat;
  while (stream->Read(&beat)) {
    v1::BeatAck ack;
    {
      absl::MutexLock l(&mu_);
      if (beat.rank() < 1 || beat.rank() >= static_cast<int>(ranks_.size()) ||
          ranks_[beat.rank()].state == RankState::kAbsent || (rank >= 0 && beat.rank() != rank))
        return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "heartbeat from a rank that has not joined");
      rank = beat.rank();
      Rank& r = ranks_[rank];
      if (r.state == RankState::kLost) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "rank declared lost");
      r.state = beat.leaving() ? RankState::kLeft : RankState::kAlive;
      left = beat.leaving();
      r.step = beat.step();
      r.cache_bytes = beat.cache_bytes();
      r.expert_load.assign(beat.expert_load().begin(), beat.expert_load().end());
      r.expert_layer_load.assign(beat.expert_layer_load().begin(), beat.expert_layer_load().end());
      r.step_seconds = beat.step_seconds();
      r.busy_steps = beat.busy_steps();
      r.last_beat = absl::Now();
    }
    if (!stream->Write(ack)) break;
  }
  absl::MutexLock l(&mu_);
  if (rank >= 0 && !left && ranks_[rank].state != RankState::kLost)
    Lost(rank, ctx->IsCancelled() ? "its heartbeat stream was cancelled" : "its heartbeat stream closed");
  return grpc::Status::OK;
}

grpc::Status Coordinator::Status(grpc::ServerContext*, const v1::StatusRequest* req, v1::ClusterStatus* resp) {
  *resp = Snapshot();
  // Per-layer loads are [layers * experts] per rank: sent only to those who ask (ctl rebalance).
  if (!req->expert_layer_load())
    for (v1::RankStatus& r : *resp->mutable_ranks()) r.clear_expert_layer_load();
  return grpc::Status::OK;
}

v1::ClusterStatus Coordinator::Snapshot() {
  v1::ClusterStatus status, *resp = &status;
  v1::RankStatus leader;
  leader.set_rank(0);
  leader.set_state("alive");
  if (cb_.leader_status) cb_.leader_status(&leader);
  resp->set_state(cb_.server_state ? cb_.server_state() : "");
  absl::MutexLock l(&mu_);
  resp->set_world_size(opt_.world_size);
  resp->set_layout(opt_.layout);
  resp->set_build_id(opt_.build_id);
  resp->set_config_digest(opt_.config_digest);
  resp->set_error(error_);
  *resp->add_ranks() = leader;
  const absl::Time now = absl::Now();
  for (int i = 1; i < static_cast<int>(ranks_.size()); ++i) {
    const Rank& r = ranks_[i];
    v1::RankStatus* s = resp->add_ranks();
    s->set_rank(i);
    s->set_state(RankStateName(static_cast<int>(r.state)));
    if (r.state == RankState::kAbsent) continue;
    s->set_host(r.join.host());
    s->set_pid(r.join.pid());
    s->set_step(r.step);
    s->set_last_beat_age_ms(absl::ToDoubleMilliseconds(now - r.last_beat));
    s->mutable_expert_load()->Add(r.expert_load.begin(), r.expert_load.end());
    s->mutable_expert_layer_load()->Add(r.expert_layer_load.begin(), r.expert_layer_load.end());
    s->set_step_seconds(r.step_seconds);
    s->set_busy_steps(r.busy_steps);
    s->set_cache_bytes(r.cache_bytes);
    s->mutable_devices()->CopyFrom(r.join.devices());
    s->set_memory_bytes(r.join.memory_bytes());
  }
  return status;
}

grpc::Status Coordinator::Drain(grpc::ServerContext*, const v1::DrainRequest* req, v1::DrainResponse*) {
  if (!(req->grace_seconds() >= 0) || req->grace_seconds() > 86400)
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "grace_seconds must be in [0, 86400]");
  if (cb_.on_drain) cb_.on_drain(absl::Seconds(req->grace_seconds()));
  return grpc::Status::OK;
}

grpc::Status Coordinator::Shutdown(grpc::ServerContext*, const v1::ShutdownRequest*, v1::ShutdownResponse*) {
  if (cb_.on_shutdown) cb_.on_shutdown();
  return grpc::Status::OK;
}

grpc::Status Coordinator::Rebalance(grpc::ServerContext*, const v1::RebalanceRequest* req,
                                    v1::RebalanceResponse* resp) {
  if (!cb_.rebalance) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this server does not rebalance");
  if (!(req->timeout_seconds() >= 0) || req->timeout_seconds() > 86400)
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "timeout_seconds must be in [0, 86400]");
  absl::StatusOr<v1::RebalanceResponse> r = cb_.rebalance(*req);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status Coordinator::GetPlacement(grpc::ServerContext*, const v1::PlacementRequest*,
                                       v1::PlacementResponse* resp) {
  if (!cb_.placement) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this server has no expert placement");
  absl::StatusOr<v1::PlacementResponse> r = cb_.placement();
  if (!r.ok()) return ToGrpcStatus(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

std::vector<int64_t> Coordinator::WorkerExpertLoadByLayer() const {
  absl::MutexLock l(&mu_);
  std::vector<int64_t> sum;
  for (size_t i = 1; i < ranks_.size(); ++i) {
    const std::vector<int64_t>& v = ranks_[i].expert_layer_load;
    if (v.empty()) continue;
    if (sum.empty()) sum.assign(v.size(), 0);
    if (v.size() != sum.size()) continue;  // a malformed beat: ignored (the config digest matched)
    for (size_t k = 0; k < v.size(); ++k) sum[k] += v[k];
  }
  return sum;
}

absl::StatusOr<ControlServer> StartControlServer(const std::string& host, int port, const ServerSecurity& security,
                                                 Coordinator* coordinator) {
  DSV4_ASSIGN_OR_RETURN(auto creds, MakeServerCredentials(security));
  ControlServer out;
  // A fixed port is tried first the way the inference port binds, for an error that says why
  // (in use by another process, not a local address); gRPC then binds it without SO_REUSEPORT, so
  // a second job cannot share it either.
  if (port != 0) DSV4_RETURN_IF_ERROR(Listener::Bind(host, port).status(), "the control plane");
  grpc::ServerBuilder builder;
  const std::string address = absl::StrCat(host, ":", port);
  builder.AddListeningPort(address, creds, &out.port);
  builder.RegisterService(coordinator);
  builder.SetMaxReceiveMessageSize(1 << 20);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  out.server = builder.BuildAndStart();
  if (out.server == nullptr || out.port == 0)
    return absl::UnavailableError(absl::StrCat("the control plane cannot listen on ", address));
  return out;
}

// ---- WorkerAgent --------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<WorkerAgent>> WorkerAgent::Join(const std::string& address,
                                                               const ClientSecurity& security,
                                                               const v1::JoinRequest& request, absl::Duration timeout) {
  std::unique_ptr<WorkerAgent> a(new WorkerAgent());
  DSV4_ASSIGN_OR_RETURN(auto channel, MakeChannel(address, security, 1 << 20));
  a->channel_ = channel;
  a->stub_ = v1::ControlPlane::NewStub(a->channel_);
  a->security_ = security;
  a->rank_ = request.rank();
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    grpc::ClientContext ctx;
    AddCredentials(ctx, security);
    ctx.set_deadline(Deadline(std::min(absl::Seconds(5), std::max(deadline - absl::Now(), absl::Milliseconds(1)))));
    ctx.set_wait_for_ready(true);
    v1::JoinResponse resp;
    const grpc::Status st = a->stub_->Join(&ctx, request, &resp);
    if (st.ok()) {
      a->interval_ = absl::Milliseconds(resp.heartbeat_interval_ms());
      a->timeout_ = absl::Milliseconds(resp.heartbeat_timeout_ms());
      return a;
    }
    if (st.error_code() != grpc::StatusCode::UNAVAILABLE && st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED)
      return FromGrpcStatus(st);
    if (absl::Now() >= deadline)
      return absl::DeadlineExceededError(absl::StrCat("cannot reach the coordinator at ", address, " within ",
                                                      absl::FormatDuration(timeout), ": ", st.error_message()));
    absl::SleepFor(absl::Milliseconds(100));
  }
}

WorkerAgent::~WorkerAgent() { Leave(); }

void WorkerAgent::Start(std::function<void(v1::Beat*)> beat, std::function<void(const absl::Status&)> on_lost) {
  beat_ = std::move(beat);
  on_lost_ = std::move(on_lost);
  AddCredentials(ctx_, security_);
  stream_ = stub_->Heartbeat(&ctx_);
  {
    absl::MutexLock l(&mu_);
    last_ack_ = absl::Now();
  }
  reader_ = std::thread([this] { ReaderLoop(); });
  writer_ = std::thread([this] { WriterLoop(); });
}

void WorkerAgent::WriterLoop() {
  for (;;) {
    v1::Beat b;
    b.set_rank(rank_);
    if (beat_) beat_(&b);
    absl::Status lost;
    {
      absl::MutexLock l(&mu_);
      if (leaving_) return;
      if (absl::Now() - last_ack_ > timeout_ && !lost_reported_)
        lost = absl::UnavailableError(
            absl::StrCat("the coordinator has not answered for ", absl::FormatDuration(absl::Now() - last_ack_)));
    }
    if (!lost.ok() || !stream_->Write(b)) {
      if (lost.ok()) lost = absl::UnavailableError("the heartbeat stream to the coordinator broke");
      absl::MutexLock l(&mu_);
      if (leaving_ || lost_reported_) return;
      lost_reported_ = true;
      if (on_lost_) on_lost_(lost);
      return;
    }
    absl::MutexLock l(&mu_);
    wake_.WaitWithTimeout(&mu_, interval_);
  }
}

void WorkerAgent::ReaderLoop() {
  v1::BeatAck ack;
  while (stream_->Read(&ack)) {
    absl::MutexLock l(&mu_);
    last_ack_ = absl::Now();
  }
  absl::MutexLock l(&mu_);
  if (leaving_ || lost_reported_) return;
  lost_reported_ = true;
  if (on_lost_) on_lost_(absl::UnavailableError("the coordinator closed the heartbeat stream"));
}

void WorkerAgent::Leave() {
  {
    absl::MutexLock l(&mu_);
    if (leaving_ || stream_ == nullptr) return;
    leaving_ = true;
    wake_.Signal();
  }
  writer_.join();
  v1::Beat bye;
  bye.set_rank(rank_);
  if (beat_) beat_(&bye);
  bye.set_leaving(true);
  stream_->Write(bye);
  stream_->WritesDone();
  reader_.join();
  (void)stream_->Finish();
}

}  // namespace dsv4
