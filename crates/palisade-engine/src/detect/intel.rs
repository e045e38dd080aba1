//! IP intelligence: the kind of network the client comes from (hosting, VPN, mobile,
//! residential), and Tor exits, as weighted signals.

use crate::engine::Engine;
use crate::model::decision::{Decision, Signal};
use crate::model::facts::RequestFacts;
use palisade_intel::ipinfo::AsnCategory;

impl Engine {
    /// Signals from what is known of the client's address.
    #[inline(always)]
    pub(crate) fn intel(&self, d: &mut Decision, facts: &RequestFacts<'_>) {
        let p = &self.policy;
        if let (Some(ip), Some(intel)) = (facts.ip_info, &p.intel) {
            if let Some(c) = ip.category {
                let i = match c {
                    AsnCategory::Hosting => 0,
                    AsnCategory::Vpn => 1,
                    AsnCategory::Mobile => 2,
                    AsnCategory::Residential => 3,
                };
                let w = intel.category_weights.get(i).copied().unwrap_or(0);
                if let (true, Some(name)) = (w > 0, self.intel_rules.get(i)) {
                    d.signals.push(Signal {
                        name: name.clone(),
                        weight: w,
                        shadow: false,
                        // The network a verified caller runs on (a cloud, a VPN) is a habit,
                        // not evidence about it; a Tor exit is not discounted.
                        discounted: crate::detect::trust::keyed(facts),
                        detail: None,
                    });
                }
            }
            if ip.tor_exit
                && intel.tor_weight > 0
                && let Some(name) = self.intel_rules.get(4)
            {
                d.signals.push(Signal {
                    name: name.clone(),
                    weight: intel.tor_weight,
                    shadow: false,
                    discounted: false,
                    detail: None,
                });
            }
        }
    }
}
