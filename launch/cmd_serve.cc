// dsv4 serve [--model M] [--host H] [--port P] [--tp N] [--ep M] ...
//
// Serves the model over gRPC until drained or stopped; under mpirun every rank runs it. The job's
// life (listening, loading, joining, warm-up, drain, fail-stop) is rpc/serve_job.h.
#include "base/status.h"
#include "launch/commands.h"
#include "rpc/serve_job.h"

namespace dsv4 {

void ServeFlags(Flags& flags) { AddServeFlags(flags); }

absl::Status Serve(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(ServeOptions options, ServeOptionsFromFlags(flags));
  ServeJob job(std::move(options));
  return job.Run();
}

}  // namespace dsv4
