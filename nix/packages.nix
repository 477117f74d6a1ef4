# Our service binaries and their images, made by lib.mkServices (nix/services.nix): `aggregate`,
# `projection`, the inventory example's `inventory-aggregate` and `inventory-projection`, and on
# Linux `<binary>-image` for each. Ours build on the one shared build of the workspace's
# dependencies; the example is built exactly as a team's flake builds its crate (the defaults:
# the toolchain of rust-toolchain.toml, its own dependency build), which is what shows that
# those work. Tests do not run here: `nix flake check` runs them once, for the whole workspace.
{
  self,
  pkgs,
  common,
  mkServices,
}: let
  labels = {
    revision = self.rev or self.dirtyRev or "dirty";
    # where the source lives, for the org.opencontainers.image.source label
    sourceUrl = "https://github.com/nats-es/nats-es";
    imagePrefix = "nats-es-";
  };

  ours = crate: binaries:
    mkServices ({
        inherit pkgs crate binaries;
        inherit (common) craneLib src commonArgs cargoArtifacts;
      }
      // labels);

  platform = ours "aggregate" {aggregate = 8081;} // ours "projection" {projection = 8082;};

  inventory = mkServices ({
      inherit pkgs;
      inherit (common) src;
      crate = "inventory";
      binaries = {
        inventory-aggregate = 8081;
        inventory-projection = 8082;
      };
    }
    // labels);
in
  removeAttrs (platform // inventory) ["default"]
  // {
    default = pkgs.symlinkJoin {
      name = "nats-es-${common.version}";
      paths = [platform.aggregate platform.projection];
      meta.mainProgram = "aggregate";
    };
  }
