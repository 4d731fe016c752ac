"""alignlab: preference alignment experiments (DPO family, OAIF, counterfactual DPO, OPO) with Hydra and Lightning."""

from alignlab.config import register_resolvers

register_resolvers()  # every config that names ${bundled:...} or ${opo_data:...} resolves, however it was composed
