# services.repx.gpu: which GPUs the agent (and so its jobs) may open.
#
# The agent unit from the package has DevicePolicy=closed: no device node beyond the pseudo
# devices. This part allows the GPUs' device groups, or only the nodes listed in gpu.devices.
{ config, lib, ... }:
let
  inherit (lib) mkIf mkOption mkDefault types;
  cfg = config.services.repx;
  gpu = cfg.gpu;

  # Device groups as /proc/devices names them (DeviceAllow=char-<name>).
  groups = {
    cuda = [
      "char-nvidia-frontend"
      "char-nvidia-uvm"
      "char-nvidiactl"
    ];
    rocm = [
      "char-drm"
      "char-kfd"
    ];
  };
  # Control nodes every process using a GPU opens, whichever GPUs it may use.
  controlNodes = {
    cuda = [
      "/dev/nvidiactl"
      "/dev/nvidia-uvm"
      "/dev/nvidia-uvm-tools"
    ];
    rocm = [ "/dev/kfd" ];
  };
  backends =
    {
      auto = [
        "cuda"
        "rocm"
      ];
      cuda = [ "cuda" ];
      rocm = [ "rocm" ];
      none = [ ];
    }
    .${gpu.backend};

  deviceAllow =
    if gpu.devices == [ ] then
      lib.concatMap (b: groups.${b}) backends
    else
      gpu.devices ++ lib.concatMap (b: controlNodes.${b}) backends;

  nvidiaEnabled =
    config.hardware.nvidia.enabled or (lib.elem "nvidia" (config.services.xserver.videoDrivers or [ ]));
in
{
  options.services.repx.gpu = {
    backend = mkOption {
      type = types.enum [
        "auto"
        "cuda"
        "rocm"
        "none"
      ];
      default = "none";
      example = "cuda";
      description = ''
        GPUs the agent's jobs may use: `cuda` (NVIDIA; needs the NVIDIA driver,
        {option}`hardware.nvidia`), `rocm` (AMD: /dev/kfd and /dev/dri), `auto` (whichever the
        host has), or `none` (no GPU device is reachable).
      '';
    };
    devices = mkOption {
      type = types.listOf (types.strMatching "/dev/.+");
      default = [ ];
      example = [
        "/dev/nvidia0"
        "/dev/nvidia1"
      ];
      description = ''
        Only these GPU device nodes (plus the backend's control nodes), instead of every GPU of
        the backend. Needs {option}`services.repx.gpu.backend` `cuda` or `rocm`.
      '';
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = gpu.backend == "cuda" -> nvidiaEnabled;
        message = ''
          services.repx.gpu.backend = "cuda" needs the NVIDIA driver, which this configuration does
          not enable: set services.xserver.videoDrivers = [ "nvidia" ] (or
          hardware.nvidia.datacenter.enable = true on a headless server), or choose
          services.repx.gpu.backend = "auto" or "none".'';
      }
      {
        assertion = gpu.devices != [ ] -> lib.elem gpu.backend [ "cuda" "rocm" ];
        message = ''
          services.repx.gpu.devices lists device nodes, but services.repx.gpu.backend is
          "${gpu.backend}": set it to "cuda" or "rocm" so the control nodes are allowed too.'';
      }
    ];

    warnings = lib.optional (gpu.backend != "none" && !cfg.agent.enable) ''
      services.repx.gpu.backend = "${gpu.backend}" has no effect: the agent role is disabled on this
      host (services.repx.agent.enable = false).'';

    services.repx.settings.agent.labels.gpu = mkIf (lib.elem gpu.backend [ "cuda" "rocm" ]) (
      mkDefault gpu.backend
    );

    systemd.services.repx-agent = mkIf (cfg.agent.enable && gpu.backend != "none") {
      serviceConfig = {
        # Device nodes must be visible (no private /dev) and are allowed one by one.
        PrivateDevices = mkDefault false;
        DevicePolicy = mkDefault "closed";
        DeviceAllow = map (d: "${d} rw") deviceAllow;
        # /dev/kfd and /dev/dri/renderD* belong to these groups.
        SupplementaryGroups = [
          "render"
          "video"
        ];
      };
    };
  };
}
