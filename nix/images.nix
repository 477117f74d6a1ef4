# The OCI image of one service binary (Linux only: an image holds Linux binaries), as
# lib.mkServices (nix/services.nix) makes one per binary:
# `nix build .#aggregate-image && docker load < result`
{
  pkgs,
  # the org.opencontainers.image.revision and .source labels (no source label when null)
  revision,
  sourceUrl,
}: let
  inherit (pkgs) lib;

  uid = "10001";

  # A non-root user the services run as; no shell, no home.
  users = pkgs.runCommand "service-users" {} ''
    mkdir -p $out/etc
    echo 'root:x:0:0:root:/var/empty:/sbin/nologin' > $out/etc/passwd
    echo 'app:x:${uid}:${uid}:service:/var/empty:/sbin/nologin' >> $out/etc/passwd
    echo 'root:x:0:' > $out/etc/group
    echo 'app:x:${uid}:' >> $out/etc/group
  '';
in
  {
    # the image's name
    name,
    # the package of the binary (its meta.mainProgram is the entry point)
    bin,
    # HTTP_ADDR=0.0.0.0:<port>
    port,
  }:
    pkgs.dockerTools.buildLayeredImage {
      inherit name;
      tag = "latest";
      contents = [bin pkgs.cacert users];
      # a writable /tmp for the non-root user
      extraCommands = ''
        mkdir -m 1777 tmp
      '';
      config = {
        Entrypoint = [(lib.getExe bin)];
        User = "${uid}:${uid}";
        Env = [
          "HTTP_ADDR=0.0.0.0:${toString port}"
          # mimalloc returns freed memory after 10 ms, not 1 s (peak RSS under load: README)
          "MIMALLOC_PURGE_DELAY=10"
          "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
        ];
        ExposedPorts."${toString port}/tcp" = {};
        Labels =
          {
            "org.opencontainers.image.title" = bin.pname;
            "org.opencontainers.image.revision" = revision;
            "org.opencontainers.image.version" = bin.version;
          }
          // lib.optionalAttrs (sourceUrl != null) {
            "org.opencontainers.image.source" = sourceUrl;
          };
      };
    }
