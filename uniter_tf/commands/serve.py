"""``uniter serve``: a TF-Serving-protocol server (gRPC + REST) for the SavedModels under a base path."""

from __future__ import annotations

NAME = "serve"
HELP = "Serve the numeric versions under a base path over TF Serving's gRPC and REST APIs."


def add_arguments(parser):
    parser.add_argument("--model-base-path", required=True,
                        help="Directory with numeric version subdirectories (BASE/1/saved_model.pb, ...).")
    parser.add_argument("--model-name", default="uniter", help="The name clients use (default: uniter).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default 127.0.0.1; use 0.0.0.0 to accept other machines).")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500).")
    parser.add_argument("--rest-api-port", type=int, default=8501,
                        help="REST port (default 8501; 0 disables REST, as in tensorflow_model_server).")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="Keep the latest N versions loaded (default 1).")
    parser.add_argument("--file-system-poll-wait-seconds", type=float, default=2.0,
                        help="How often to scan the base path for new versions (0: only at start).")
    parser.add_argument("--grpc-max-message-bytes", type=int, default=256 * 1024 * 1024,
                        help="Largest gRPC request and response (default 256 MiB).")
    parser.add_argument("--rest-api-max-body-bytes", type=int, default=256 * 1024 * 1024,
                        help="Largest REST request body (default 256 MiB).")
    parser.add_argument("--grpc-threads", type=int, default=16, help="Concurrent gRPC requests (default 16).")
    parser.add_argument("--enable-batching", action="store_true",
                        help="Merge concurrent requests of the same signature and shape into one call.")
    parser.add_argument("--max-batch-size", type=int, default=32, help="Rows per merged call (default 32).")
    parser.add_argument("--batch-timeout-micros", type=int, default=2000,
                        help="How long a request waits for others to batch with (default 2000).")
    parser.add_argument("--num-batch-threads", type=int, default=2,
                        help="Merged calls that run at once (default 2).")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO).")


def run(args) -> int:
    import logging
    import signal

    from serving.batching import BatchingOptions
    from serving.server import ModelServer, ServerConfig

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    batching = None
    if args.enable_batching:
        batching = BatchingOptions(max_batch_size=args.max_batch_size,
                                   batch_timeout_micros=args.batch_timeout_micros,
                                   num_batch_threads=args.num_batch_threads)
    config = ServerConfig(
            model_name=args.model_name, model_base_path=args.model_base_path, host=args.host, port=args.port,
            rest_api_port=args.rest_api_port or None, num_versions=args.num_versions,
            poll_interval_s=args.file_system_poll_wait_seconds,
            max_receive_message_bytes=args.grpc_max_message_bytes,
            max_send_message_bytes=args.grpc_max_message_bytes,
            rest_max_body_bytes=args.rest_api_max_body_bytes, grpc_threads=args.grpc_threads, batching=batching)
    server = ModelServer(config).start()

    def stop(signum, _frame):
        logging.getLogger(__name__).info("Signal %d: stopping", signum)
        server.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # One machine-readable line, so that scripts (and tests) can find ephemeral ports.
    print(f"SERVING model={args.model_name} grpc={args.host}:{server.grpc_port} "
          f"rest={f'{args.host}:{server.rest_port}' if server.rest_port else 'off'} "
          f"versions={server.managers[args.model_name].available_versions()}", flush=True)
    while not server.wait(1.0):
        pass
    return 0
