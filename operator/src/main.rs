//! `weir-operator`: the Kubernetes operator for StreamJobs. The controller is built in a later
//! stage (issue 6); until then this binary only reports that and exits non-zero, so nothing
//! mistakes it for a working operator.

fn main() -> std::process::ExitCode {
    eprintln!("weir-operator: the StreamJob controller is not built yet (see issue 6); use `weir-worker run -f` to run jobs locally");
    std::process::ExitCode::from(2)
}
