# tpi bootfetch in shell, for an image with no python3: the verbs and exit codes of
# bootfetch.py, with curl's --aws-sigv4 (curl 7.87 or later: older ones sign the hash of an
# empty body) and the instance profile's credentials from IMDSv2. Secrets go to curl on
# stdin (--config -), never in its arguments.
tpi_fetch() {
  local conf=${TPI_FETCH_CONFIG:-/etc/tpi/fetch.json}
  local imds token role doc bucket region base out code verb="$1"
  # percent-encodes all but A-Za-z0-9._~- (and / unless $2 replaces it), as S3 signs a key:
  # a raw + is a space to S3, [ ] { } are curl's globs, a space is no URL at all
  _tpi_enc() {
    local LC_ALL=C s="$1" out="" c i
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      case "$c" in
        [A-Za-z0-9._~-]) out+=$c ;;
        /) out+=${2:-/} ;;
        *) printf -v c '%%%02X' "'$c"; out+=$c ;;
      esac
    done
    printf '%s' "$out"
  }
  _tpi_field() { printf '%s' "$2" | tr ',{}' '\n\n\n' \
    | sed -n "s/^[[:space:]]*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" | head -n 1; }
  bucket=$(_tpi_field bucket "$(cat "$conf")")
  region=$(_tpi_field region "$(cat "$conf")")
  imds=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
  imds=${imds%/}/latest
  token=$(curl -sSf --retry 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 21600" \
    "$imds/api/token") || { echo "bootfetch: $verb: no metadata token" >&2; return 1; }
  _tpi_md() { curl -sSf --retry 5 -H "X-aws-ec2-metadata-token: $token" "$imds/meta-data/$1"; }
  role=$(_tpi_md iam/security-credentials/) && doc=$(_tpi_md "iam/security-credentials/$role") \
    || { echo "bootfetch: $verb: no instance profile credentials" >&2; return 1; }
  # curl reads the credentials and the token from stdin, so no process listing shows them
  _tpi_curl() {
    local service="$1"; shift
    printf 'user = "%s:%s"\nheader = "x-amz-security-token: %s"\n' \
      "$(_tpi_field AccessKeyId "$doc")" "$(_tpi_field SecretAccessKey "$doc")" \
      "$(_tpi_field Token "$doc")" \
      | curl -sS --retry 5 --config - --aws-sigv4 "aws:amz:$region:$service" "$@"
  }
  base=${AWS_ENDPOINT_URL_S3:-${AWS_ENDPOINT_URL:-}}
  base=${base:+${base%/}/$bucket}
  base=${base:-https://$bucket.s3.$region.amazonaws.com}
  out=$(mktemp)
  case "$verb" in
    get)
      code=$(_tpi_curl s3 -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o "$3.part" \
        -w '%{http_code}' "$base/$(_tpi_enc "$2")") || code=000
      if [ "$code" = 200 ]; then mv "$3.part" "$3"; rm -f "$out"; return 0; fi
      rm -f "$3.part" "$out"
      echo "bootfetch: get $2: HTTP $code" >&2
      [ "$code" = 404 ] && return 3
      return 1 ;;
    put)
      code=$(_tpi_curl s3 -X PUT -T "$2" -H "Content-Type: text/plain" \
        -H "x-amz-content-sha256: $(sha256sum "$2" | cut -d' ' -f1)" -o "$out" \
        -w '%{http_code}' "$base/$(_tpi_enc "$3")") || code=000 ;;
    count)
      code=$(_tpi_curl s3 -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -o "$out" \
        -w '%{http_code}' "$base?list-type=2&prefix=$(_tpi_enc "$2" %2F)") \
        || code=000
      [ "$code" = 200 ] && grep -o '<Key>' "$out" | wc -l ;;
    leave)
      local api=${AWS_ENDPOINT_URL_AUTO_SCALING:-${AWS_ENDPOINT_URL:-https://autoscaling.$region.amazonaws.com}}
      code=$(_tpi_curl autoscaling -X POST -H "Content-Type: application/x-www-form-urlencoded" \
        --data "Action=TerminateInstanceInAutoScalingGroup&InstanceId=$(_tpi_md instance-id)&ShouldDecrementDesiredCapacity=true&Version=2011-01-01" \
        -o "$out" -w '%{http_code}' "${api%/}/") || code=000 ;;
    *) echo "bootfetch: unknown verb $verb" >&2; rm -f "$out"; return 2 ;;
  esac
  rm -f "$out"
  [ "$code" = 200 ] && return 0
  [ "$verb" = put ] && set -- put "$3"
  echo "bootfetch: $verb${2:+ $2}: HTTP $code" >&2
  return 1
}
