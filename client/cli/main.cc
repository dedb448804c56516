// plume: the command-line client. See `plume --help`.
#include <CLI/CLI.hpp>

#include "absl/strings/str_format.h"
#include "bench.h"
#include "commands.h"
#include "plume/build_info.h"

int main(int argc, char** argv) {
  using namespace plume::cli;
  CLI::App app{"plume: upload FP8 matrices to a plume server and run GEMV on them", "plume"};
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the subcommand
  // Version, commit, build type and backends of this build (the server's
  // own: `plume-server --version`).
  app.set_version_flag("--version", [] { return plume::VersionText("plume"); },
                       "print the version, commit, build type and backends of this build, and exit");

  GlobalFlags g;
  app.add_option("--server", g.server, "server address HOST:PORT")->capture_default_str();
  app.add_option("--timeout", g.timeout_s, "per-call deadline in seconds")->capture_default_str();
  app.add_flag("--tls", g.tls, "use TLS (system roots unless --tls-ca)");
  app.add_option("--tls-ca,--tls_ca", g.tls_ca, "PEM file of CA certificates to trust (implies --tls)");
  app.add_option("--tls-cert,--tls_cert", g.tls_cert, "PEM client certificate for mutual TLS (implies --tls)");
  app.add_option("--tls-key,--tls_key", g.tls_key, "PEM key of --tls-cert");
  app.add_option("--token", g.token, "bearer token sent as `authorization: Bearer ...`")
      ->envname("PLUME_TOKEN");
  app.add_option("--token-file,--token_file", g.token_file, "file holding the bearer token");

  int rc = kExitOk;

  UploadFlags up;
  auto* upload = app.add_subcommand(
      "upload", "upload a matrix from a .npy or .safetensors file (FP8 tensors go pre-packed with their scales)");
  upload->add_option("NAME", up.name, "matrix name")->required();
  upload->add_option("FILE", up.file,
                     ".npy (f32/f16, 2-D, C order) or .safetensors file (F32/F16/BF16, or F8_E4M3/F8_E5M2 "
                     "with a scale tensor)")
      ->check(CLI::ExistingFile);
  upload->add_option("--format", up.format,
                     "FP8 format of F32/F16/BF16 sources (default e4m3) and of --codes; an FP8 tensor's is its dtype")
      ->check(CLI::IsMember({"e4m3", "e5m2"}));
  upload->add_option("--scale", up.scale,
                     "scaling mode of F32/F16/BF16 sources (default row); for FP8 sources only 'none' "
                     "(no scale tensor), else the scale tensor's shape picks it")
      ->check(CLI::IsMember({"none", "tensor", "row", "block128", "block128x128"}));
  upload->add_option("--tensor", up.tensor, "tensor KEY in a .safetensors file");
  upload->add_option("--scale-tensor,--scale_tensor", up.scale_tensor,
                     "scale tensor KEY of an FP8 tensor (default: KEY_scale, KEY_scale_inv, or for "
                     "P.weight P.weight_scale / P.weight_scale_inv)");
  upload->add_option("--codes", up.codes, "raw FP8 codes: a [rows, cols] uint8 .npy (instead of FILE; needs --format)")
      ->check(CLI::ExistingFile);
  upload->add_option("--scales", up.scales,
                     "float32 .npy of the --codes' scales: [] or [1] tensor, [rows] or [rows,1] row, "
                     "[rows,ceil(cols/128)] block128, [ceil(rows/128),ceil(cols/128)] block128x128")
      ->check(CLI::ExistingFile);
  upload->add_flag("--non-saturating", up.non_saturating,
                   "overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  upload->add_option("--placement", up.placement,
                     "where a multi-GPU server keeps it: auto, single, sharded or replicated")
      ->check(CLI::IsMember({"auto", "single", "sharded", "replicated"}))
      ->capture_default_str();
  upload->callback([&] { rc = RunUpload(g, up); });

  UploadModelFlags um;
  auto* upload_model = app.add_subcommand(
      "upload-model", "upload every matching 2-D tensor of a checkpoint (.safetensors or its index .json); "
                      "a rerun skips what is resident with the same content hash");
  upload_model->add_option("FILE", um.file, ".safetensors file, or model.safetensors.index.json of a sharded one")
      ->required()
      ->check(CLI::ExistingFile);
  upload_model->add_option("--match", um.match,
                           "regular expression searched in tensor names (default: names ending in \"weight\"); "
                           "scale tensors are never uploaded as matrices");
  upload_model->add_option("--prefix", um.prefix, "prepended to each tensor name to make the matrix name");
  upload_model->add_option("--format", um.format, "FP8 format for F32/F16/BF16 tensors (default e4m3)")
      ->check(CLI::IsMember({"e4m3", "e5m2"}));
  upload_model->add_option("--scale", um.scale, "scaling mode for F32/F16/BF16 tensors (default row)")
      ->check(CLI::IsMember({"none", "tensor", "row", "block128", "block128x128"}));
  upload_model->add_flag("--non-saturating", um.non_saturating,
                         "F32/F16/BF16 tensors: overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  upload_model->add_option("--placement", um.placement,
                           "where a multi-GPU server keeps each: auto, single, sharded or replicated")
      ->check(CLI::IsMember({"auto", "single", "sharded", "replicated"}))
      ->capture_default_str();
  upload_model->add_flag("--replace", um.replace,
                         "delete and re-upload a resident matrix of the same name whose content hash differs");
  upload_model->callback([&] { rc = RunUploadModel(g, um); });

  auto* list = app.add_subcommand("list", "list the resident matrices");
  list->callback([&] { rc = RunList(g); });

  std::string info_name;
  auto* info = app.add_subcommand("info", "show everything about one matrix");
  info->add_option("NAME", info_name, "matrix name")->required();
  info->callback([&] { rc = RunInfo(g, info_name); });

  std::string delete_name;
  auto* del = app.add_subcommand("delete", "delete a matrix");
  del->add_option("NAME", delete_name, "matrix name")->required();
  del->callback([&] { rc = RunDelete(g, delete_name); });

  GemvFlags gf;
  auto* gemv = app.add_subcommand("gemv", "y = W x for a 1-D [cols] or 2-D [batch, cols] .npy input");
  gemv->add_option("NAME", gf.name, "matrix name")->required();
  gemv->add_option("INPUT", gf.input, "input .npy (f32 or f16)")->required()->check(CLI::ExistingFile);
  gemv->add_option("-o,--output", gf.output, "write the result to this .npy instead of printing it");
  gemv->add_option("--output-dtype", gf.output_dtype, "result dtype (bf16 results are saved as f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  gemv->callback([&] { rc = RunGemv(g, gf); });

  // K/V caches and attention.
  auto* kv = app.add_subcommand("kv", "K/V caches: upload, append, list, info, delete");
  kv->require_subcommand(1);
  KvUploadFlags kvu;
  auto* kv_upload = kv->add_subcommand("upload", "upload K and V ([kv_heads, seq, head_dim] .npy files) as a new cache");
  kv_upload->add_option("NAME", kvu.name, "cache name")->required();
  kv_upload->add_option("K", kvu.k_file, "K .npy (f32/f16, 3-D)")->required()->check(CLI::ExistingFile);
  kv_upload->add_option("V", kvu.v_file, "V .npy (same shape and dtype as K)")->required()->check(CLI::ExistingFile);
  kv_upload->add_option("--format", kvu.format, "FP8 format")
      ->check(CLI::IsMember({"e4m3", "e5m2"}))
      ->capture_default_str();
  kv_upload->add_option("--scale", kvu.scale, "scales: none, tensor, head, or block (per head per 64 tokens)")
      ->check(CLI::IsMember({"none", "tensor", "head", "block"}))
      ->capture_default_str();
  kv_upload->add_flag("--non-saturating", kvu.non_saturating,
                      "overflow becomes NaN (E4M3) / inf (E5M2) instead of saturating");
  kv_upload->callback([&] { rc = RunKvUpload(g, kvu); });

  std::string kva_name, kva_k, kva_v;
  auto* kv_append = kv->add_subcommand("append", "append tokens ([kv_heads, tokens, head_dim] .npy files)");
  kv_append->add_option("NAME", kva_name, "cache name")->required();
  kv_append->add_option("K", kva_k, "K .npy")->required()->check(CLI::ExistingFile);
  kv_append->add_option("V", kva_v, "V .npy")->required()->check(CLI::ExistingFile);
  kv_append->callback([&] { rc = RunKvAppend(g, kva_name, kva_k, kva_v); });

  kv->add_subcommand("list", "list the K/V caches")->callback([&] { rc = RunKvList(g); });

  std::string kv_info_name;
  auto* kv_info = kv->add_subcommand("info", "show everything about one cache");
  kv_info->add_option("NAME", kv_info_name, "cache name")->required();
  kv_info->callback([&] { rc = RunKvInfo(g, kv_info_name); });

  std::string kv_delete_name;
  auto* kv_delete = kv->add_subcommand("delete", "delete a cache");
  kv_delete->add_option("NAME", kv_delete_name, "cache name")->required();
  kv_delete->callback([&] { rc = RunKvDelete(g, kv_delete_name); });

  AttendFlags af;
  auto* attend = app.add_subcommand("attend", "softmax(scale Q K^T) V for a [batch, heads, q_len, head_dim] .npy query");
  attend->add_option("NAME", af.name, "cache name")->required();
  attend->add_option("Q", af.input, "query .npy (f32 or f16, 4-D)")->required()->check(CLI::ExistingFile);
  attend->add_option("-o,--output", af.output, "write the result to this .npy instead of printing it");
  attend->add_flag("--causal", af.causal, "the queries are the last q_len positions of the sequence");
  attend->add_option("--scale", af.scale, "softmax scale (default 1/sqrt(head_dim))");
  attend->add_option("--out-dtype", af.output_dtype, "result dtype (bf16 results are saved as f32)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  attend->callback([&] { rc = RunAttend(g, af); });

  BenchFlags bf;
  auto* bench = app.add_subcommand(
      "bench", "load generator: throughput, latency percentiles and the server's queue/kernel split");
  bench->add_option("MATRIX", bf.matrix, "matrix to run GEMV on (with --echo: only its cols are used)");
  bench->add_option("--mode", bf.mode, "stream (GemvStream/EchoStream) or unary (Gemv/Echo)")
      ->check(CLI::IsMember({"stream", "unary"}))
      ->capture_default_str();
  bench->add_option("--concurrency", bf.concurrency, "closed loop: requests in flight, a comma-separated sweep")
      ->capture_default_str();
  bench->add_option("--rate", bf.rate, "open loop: requests/s (comma-separated sweep); overrides --concurrency");
  bench->add_option("--dtype", bf.dtype, "vector dtype")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  bench->add_option("--output_dtype,--output-dtype", bf.output_dtype, "GEMV result dtype (default: --dtype)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  bench->add_option("--batch", bf.batch, "vectors per request")->capture_default_str();
  bench->add_flag("--echo", bf.echo, "measure the Echo ceiling: the same payloads through DiagnosticsService.Echo");
  bench->add_option("--cols", bf.cols, "--echo without a MATRIX: elements per vector");
  bench->add_option("--window_ms,--window-ms", bf.window_ms, "measurement window")->capture_default_str();
  bench->add_option("--max_windows,--max-windows", bf.max_windows, "measured windows per step at most (warm-up not counted)")
      ->capture_default_str();
  bench->add_option("--max_seconds,--max-seconds", bf.max_seconds, "seconds per step at most, warm-up included")
      ->capture_default_str();
  bench->add_option("--stability", bf.stability, "a step is stable once its last 3 windows are within this fraction")
      ->capture_default_str();
  bench->add_option("--connections", bf.connections, "gRPC connections to spread the load over")->capture_default_str();
  bench->add_option("--streams", bf.streams, "stream mode: streams per step (0: concurrency/8, 1..32; open loop 16)")
      ->capture_default_str();
  bench->add_option("--max_outstanding,--max-outstanding", bf.max_outstanding, "open loop: requests in flight at most")
      ->capture_default_str();
  bench->add_option("--seed", bf.seed, "seed of the random input vectors")->capture_default_str();
  bench->add_option("--metrics_url,--metrics-url", bf.metrics_url,
                    "server's Prometheus endpoint, http://HOST:PORT/metrics (queue/kernel split, mean batch)");
  bench->add_option("--metrics_user,--metrics-user", bf.metrics_user, "basic-auth user of --metrics_url");
  bench->add_option("--metrics_password_file,--metrics-password-file", bf.metrics_password_file,
                    "file holding the basic-auth password of --metrics_url");
  bench->add_option("--json", bf.json, "also write every number to this JSON file");
  bench->add_flag("--progress", bf.progress, "live progress on stderr even when it is not a terminal");
  bench->callback([&] { rc = RunBench(g, bf); });

  std::string health_service;
  auto* health = app.add_subcommand("health", "grpc.health.v1 check; exit 0 when SERVING");
  health->add_option("--service", health_service, "service name (default: the whole server)");
  health->callback([&] { rc = RunHealth(g, health_service); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    absl::FPrintF(stderr, "error: INVALID_ARGUMENT: %s\n", e.what());
    absl::FPrintF(stderr, "run `plume --help` for usage\n");
    return kExitUsage;
  }
  return rc;
}
