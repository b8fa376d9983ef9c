"""``uniter serve``: a TF-Serving-protocol server (gRPC + REST) for the SavedModels under a base path."""

from __future__ import annotations

NAME = "serve"
HELP = "Serve the numeric versions under a base path over TF Serving's gRPC and REST APIs."


# TF Serving's flag spellings (tensorflow_model_server --model_base_path=... --rest_api_port=...) are
# accepted beside ours, so that scripts written for it run unchanged; docs/serving.md lists them.
BATCHING_FILE_FIELDS = ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches")
# Fields of a TF Serving batching_parameters_file that change nothing here: this server merges only
# requests of the same shape, so it never pads.
BATCHING_FILE_IGNORED = ("pad_variable_length_inputs",)


def _bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


_bool.__name__ = "boolean"  # argparse names the type in its error message


def add_arguments(parser):
    parser.add_argument("--model-base-path", "--model_base_path", dest="model_base_path", required=True,
                        help="Directory with numeric version subdirectories (BASE/1/saved_model.pb, ...).")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default="uniter",
                        help="The name clients use (default: uniter).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="Address to bind (default 127.0.0.1; use 0.0.0.0 to accept other machines).")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500).")
    parser.add_argument("--rest-api-port", "--rest_api_port", dest="rest_api_port", type=int, default=8501,
                        help="REST port (default 8501; 0 disables REST, as in tensorflow_model_server).")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="Keep the latest N versions loaded (default 1).")
    parser.add_argument("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds",
                        dest="file_system_poll_wait_seconds", type=float, default=2.0,
                        help="How often to scan the base path for new versions (0: only at start).")
    parser.add_argument("--grpc-max-message-bytes", type=int, default=256 * 1024 * 1024,
                        help="Largest gRPC request and response (default 256 MiB).")
    parser.add_argument("--rest-api-max-body-bytes", type=int, default=256 * 1024 * 1024,
                        help="Largest REST request body (default 256 MiB).")
    parser.add_argument("--grpc-threads", "--grpc_max_threads", dest="grpc_threads", type=int, default=16,
                        help="Concurrent gRPC requests (default 16).")
    parser.add_argument("--enable-batching", "--enable_batching", dest="enable_batching", type=_bool, nargs="?",
                        const=True, default=False,
                        help="Merge concurrent requests of the same signature and shape into one call.")
    parser.add_argument("--batching-parameters-file", "--batching_parameters_file", dest="batching_parameters_file",
                        default=None,
                        help="TF Serving's batching parameters (text format: max_batch_size { value: 32 } ...); "
                             "its values replace the three flags below.")
    parser.add_argument("--max-batch-size", type=int, default=32, help="Rows per merged call (default 32).")
    parser.add_argument("--batch-timeout-micros", type=int, default=2000,
                        help="How long a request waits for others to batch with (default 2000).")
    parser.add_argument("--num-batch-threads", type=int, default=2,
                        help="Merged calls that run at once (default 2).")
    parser.add_argument("--tensorflow-intra-op-parallelism", "--tensorflow_intra_op_parallelism",
                        dest="intra_op_threads", type=int, default=0,
                        help="Threads inside one TensorFlow op (default 0: TensorFlow decides).")
    parser.add_argument("--tensorflow-inter-op-parallelism", "--tensorflow_inter_op_parallelism",
                        dest="inter_op_threads", type=int, default=0,
                        help="TensorFlow ops run at once (default 0: TensorFlow decides).")
    parser.add_argument("--tensorflow-session-parallelism", "--tensorflow_session_parallelism",
                        dest="session_threads", type=int, default=0,
                        help="Both of the above, as in tensorflow_model_server.")
    parser.add_argument("--log-level", default="INFO", help="Log level of the server's own lines (default INFO).")


def read_batching_parameters(path: str) -> dict:
    """Reads a TF Serving ``--batching_parameters_file`` (text-format ``BatchingParameters``).

    Args:
        path: the file, e.g. ``max_batch_size { value: 32 } batch_timeout_micros { value: 2000 }``.

    Returns:
        ``{field: int}`` for the fields of :data:`BATCHING_FILE_FIELDS` the file sets.

    Raises:
        ValueError: a field this server does not support, or a value that is not an integer, naming the
            file and the field.
    """
    import re

    with open(path, encoding="utf-8") as handle:
        text = re.sub(r"#[^\n]*", "", handle.read())
    values = {}
    pattern = re.compile(r"(\w+)\s*(?:\{\s*value\s*:\s*([^\s}]+)\s*\}|:\s*([^\s{}]+))|(\S+)")
    for match in pattern.finditer(text):
        field, wrapped, plain, junk = match.groups()
        if junk is not None:
            raise ValueError(f"{path}: cannot read {junk!r} (expected lines like 'max_batch_size {{ value: 32 }}')")
        value = wrapped if wrapped is not None else plain
        if field in BATCHING_FILE_IGNORED:
            continue
        if field not in BATCHING_FILE_FIELDS:
            raise ValueError(f"{path}: field {field!r} is not supported by uniter serve "
                             f"(supported: {', '.join(BATCHING_FILE_FIELDS + BATCHING_FILE_IGNORED)})")
        try:
            values[field] = int(value)
        except ValueError:
            raise ValueError(f"{path}: {field} must be an integer, got {value!r}") from None
    return values


def check_port_free(host: str, port: int, flag: str) -> None:
    """Raises if ``host:port`` cannot be bound: before the (slow) model load, not after it.

    Args:
        host: the address to bind.
        port: the port; 0 (pick one) is never busy.
        flag: the flag that set it, named in the error.

    Raises:
        OSError: the port is in use or the address cannot be bound, naming the flag.
    """
    import errno
    import socket

    if not port:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise OSError(f"--host {host}: cannot resolve it ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As the servers bind: SO_REUSEADDR lets a port in TIME_WAIT through, a listening socket not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise OSError(f"{flag} {port}: port {port} on {host} is already in use (another server "
                              f"running? pick another with {flag})") from None
            raise OSError(f"{flag} {port}: cannot bind {host}:{port} ({error.strerror})") from None


def run(args) -> int:
    import logging
    import os
    import signal

    from uniter_tf.console import OWN_LOGGERS, UserError

    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        raise UserError(f"--log-level {args.log_level}: not a log level (DEBUG, INFO, WARNING, ERROR)")
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    if not os.path.isdir(args.model_base_path):
        raise UserError(f"--model-base-path {args.model_base_path}: no such directory")
    check_port_free(args.host, args.port, "--port")
    if args.rest_api_port:
        if args.rest_api_port == args.port:
            raise UserError(f"--rest-api-port {args.rest_api_port}: the same port as --port")
        check_port_free(args.host, args.rest_api_port, "--rest-api-port")
    batching_values = {"max_batch_size": args.max_batch_size, "batch_timeout_micros": args.batch_timeout_micros,
                       "num_batch_threads": args.num_batch_threads}
    if args.batching_parameters_file:
        batching_values.update(read_batching_parameters(args.batching_parameters_file))

    from serving.batching import BatchingOptions
    from serving.server import ModelServer, ServerConfig

    batching = BatchingOptions(**batching_values) if args.enable_batching else None
    intra = args.intra_op_threads or args.session_threads
    inter = args.inter_op_threads or args.session_threads
    if intra or inter:
        import tensorflow as tf

        if intra:
            tf.config.threading.set_intra_op_parallelism_threads(intra)
        if inter:
            tf.config.threading.set_inter_op_parallelism_threads(inter)
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
