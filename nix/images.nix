# OCI images of the two services (Linux only: an image holds Linux binaries).
# `nix build .#aggregate-image && docker load < result`
{
  self,
  pkgs,
  binaries,
}: let
  inherit (pkgs) lib;

  # Where the source lives, for the org.opencontainers.image.source label.
  sourceUrl = "https://github.com/nats-es/nats-es";
  revision = self.rev or self.dirtyRev or "dirty";

  uid = "10001";

  # A non-root user the services run as; no shell, no home.
  users = pkgs.runCommand "nats-es-users" {} ''
    mkdir -p $out/etc
    echo 'root:x:0:0:root:/var/empty:/sbin/nologin' > $out/etc/passwd
    echo 'app:x:${uid}:${uid}:nats-es service:/var/empty:/sbin/nologin' >> $out/etc/passwd
    echo 'root:x:0:' > $out/etc/group
    echo 'app:x:${uid}:' >> $out/etc/group
  '';

  image = {
    name,
    port,
  }: let
    bin = binaries.${name};
  in
    pkgs.dockerTools.buildLayeredImage {
      name = "nats-es-${name}";
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
          "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
        ];
        ExposedPorts."${toString port}/tcp" = {};
        Labels = {
          "org.opencontainers.image.title" = name;
          "org.opencontainers.image.source" = sourceUrl;
          "org.opencontainers.image.revision" = revision;
          "org.opencontainers.image.version" = bin.version;
        };
      };
    };
in
  lib.optionalAttrs pkgs.stdenv.isLinux {
    aggregate-image = image {
      name = "aggregate";
      port = 8081;
    };
    projection-image = image {
      name = "projection";
      port = 8082;
    };
  }
