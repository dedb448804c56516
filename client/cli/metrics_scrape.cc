#include "metrics_scrape.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace plume::cli {

absl::StatusOr<HttpUrl> ParseHttpUrl(absl::string_view url) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "http://")) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics URL '", url, "' must start with http:// (https is not supported)"));
  }
  HttpUrl u;
  const size_t slash = rest.find('/');
  absl::string_view authority = rest.substr(0, slash);
  if (slash != absl::string_view::npos) u.path = std::string(rest.substr(slash));
  if (const size_t at = authority.rfind('@'); at != absl::string_view::npos) {
    u.userinfo = std::string(authority.substr(0, at));
    authority.remove_prefix(at + 1);
  }
  absl::string_view host = authority;
  if (absl::StartsWith(authority, "[")) {  // [v6]:port
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) return absl::InvalidArgumentError(absl::StrCat("bad host in '", url, "'"));
    host = authority.substr(1, close - 1);
    absl::string_view after = authority.substr(close + 1);
    if (absl::ConsumePrefix(&after, ":")) u.port = std::string(after);
  } else if (const size_t colon = authority.rfind(':'); colon != absl::string_view::npos) {
    host = authority.substr(0, colon);
    u.port = std::string(authority.substr(colon + 1));
  }
  int port = 0;
  if (host.empty() || !absl::SimpleAtoi(u.port, &port) || port <= 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("bad host or port in metrics URL '", url, "'"));
  }
  u.host = std::string(host);
  return u;
}

namespace {

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

absl::StatusOr<std::string> HttpGet(const HttpUrl& url, const std::string& basic_auth,
                                    absl::Duration timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(url.host.c_str(), url.port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", url.host, ": ", gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, void (*)(addrinfo*)> addrs(res, freeaddrinfo);
  const timeval tv = absl::ToTimeval(timeout);
  int fd = -1;
  std::string why = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
    why = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot connect to ", url.host, ":", url.port, ": ", why));
  FdCloser closer{fd};
  std::string req = absl::StrCat("GET ", url.path, " HTTP/1.0\r\nHost: ", url.host, ":", url.port,
                                 "\r\nAccept: text/plain\r\nConnection: close\r\n");
  if (!basic_auth.empty()) absl::StrAppend(&req, "Authorization: Basic ", absl::Base64Escape(basic_auth), "\r\n");
  req += "\r\n";
  for (size_t off = 0; off < req.size();) {
    const ssize_t n = send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return absl::UnavailableError(absl::StrCat("cannot send to ", url.host, ": ", std::strerror(errno)));
    off += static_cast<size_t>(n);
  }
  std::string resp;
  char buf[1 << 16];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("reading from ", url.host, ": ", std::strerror(errno)));
    }
    resp.append(buf, static_cast<size_t>(n));
    if (resp.size() > (size_t{64} << 20)) return absl::ResourceExhaustedError("metrics response over 64 MiB");
  }
  const size_t head_end = resp.find("\r\n\r\n");
  if (head_end == std::string::npos) return absl::UnavailableError("malformed HTTP response (no header end)");
  const absl::string_view status_line = absl::string_view(resp).substr(0, resp.find("\r\n"));
  const std::vector<absl::string_view> parts = absl::StrSplit(status_line, absl::MaxSplits(' ', 2));
  int code = 0;
  if (parts.size() < 2 || !absl::SimpleAtoi(parts[1], &code)) {
    return absl::UnavailableError(absl::StrCat("malformed HTTP status line '", status_line, "'"));
  }
  if (code != 200) {
    return absl::UnavailableError(absl::StrCat("GET ", url.path, " answered '", status_line, "'",
                                               code == 401 ? " (basic auth needed or wrong)" : ""));
  }
  return resp.substr(head_end + 4);
}

std::map<std::string, double> ParsePrometheusText(absl::string_view text,
                                                  const std::set<std::string>& names) {
  std::map<std::string, double> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    size_t name_end = 0;
    while (name_end < line.size() && line[name_end] != '{' && line[name_end] != ' ' && line[name_end] != '\t') {
      ++name_end;
    }
    const std::string name(line.substr(0, name_end));
    if (names.count(name) == 0) continue;
    size_t pos = name_end;
    if (pos < line.size() && line[pos] == '{') {  // skip the labels, quoted values may hold } or spaces
      bool quoted = false;
      for (++pos; pos < line.size(); ++pos) {
        if (quoted && line[pos] == '\\') {
          ++pos;
        } else if (line[pos] == '"') {
          quoted = !quoted;
        } else if (!quoted && line[pos] == '}') {
          break;
        }
      }
      if (pos >= line.size()) continue;
      ++pos;
    }
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(pos));
    const absl::string_view value = rest.substr(0, rest.find_first_of(" \t"));  // a timestamp may follow
    double v = 0;
    if (!absl::SimpleAtod(value, &v) || !std::isfinite(v)) continue;
    out[name] += v;
  }
  return out;
}

}  // namespace plume::cli
