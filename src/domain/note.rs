//! The order note a manager reads on the lead: what was bought, the total, delivery, payment, the buyer's
//! comment and the order link, in the seller's language. amoCRM documents no length limit for a note, so a
//! long order is cut at whole lines, saying how many items were left out.
//!
//! The text is a pure function of the stored order and the language: after an ambiguous answer the push reads
//! the lead's notes and recognises its own by this exact text.

use super::lang::Lang;
use super::order::{Money, OrderDraft};

/// Most item lines written out; the rest are counted.
pub const MAX_ITEM_LINES: usize = 40;
/// Longest note text.
pub const MAX_CHARS: usize = 4000;
/// Longest comment quoted.
const MAX_COMMENT: usize = 1000;

struct Words {
    order: &'static str,
    items: &'static str,
    more: &'static str,
    total: &'static str,
    delivery: &'static str,
    address: &'static str,
    payment: &'static str,
    comment: &'static str,
    link: &'static str,
    pcs: &'static str,
}

fn words(lang: Lang) -> &'static Words {
    match lang {
        Lang::Uz => &Words {
            order: "Buyurtma",
            items: "Mahsulotlar",
            more: "yana {n} ta mahsulot",
            total: "Jami",
            delivery: "Yetkazib berish",
            address: "Manzil",
            payment: "To'lov",
            comment: "Xaridor izohi",
            link: "Buyurtma havolasi",
            pcs: "dona",
        },
        Lang::Ru => &Words {
            order: "Заказ",
            items: "Товары",
            more: "и ещё {n} поз.",
            total: "Итого",
            delivery: "Доставка",
            address: "Адрес",
            payment: "Оплата",
            comment: "Комментарий покупателя",
            link: "Ссылка на заказ",
            pcs: "шт.",
        },
        Lang::En => &Words {
            order: "Order",
            items: "Items",
            more: "and {n} more items",
            total: "Total",
            delivery: "Delivery",
            address: "Address",
            payment: "Payment",
            comment: "Buyer's comment",
            link: "Order link",
            pcs: "pcs",
        },
    }
}

/// `150000.00 UZS` → `150 000 UZS`; fractions kept when there are any (`12.50 USD`).
pub fn money(m: Money, currency: &str) -> String {
    let minor = m.minor();
    let whole = (minor / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(' ');
        }
        grouped.push(c);
    }
    if minor % 100 != 0 {
        grouped.push_str(&format!(".{:02}", minor % 100));
    }
    format!("{grouped} {currency}")
}

/// The note's text for an order, in `lang`.
pub fn render(order: &OrderDraft, lang: Lang) -> String {
    let w = words(lang);
    let cur = order.currency.as_str();
    let mut lines = vec![
        format!("{} #{}", w.order, order.order_number),
        String::new(),
    ];
    lines.push(format!("{}:", w.items));
    for (i, item) in order.items.iter().take(MAX_ITEM_LINES).enumerate() {
        lines.push(format!(
            "{}. {} (SKU {}) — {} {} × {} = {}",
            i + 1,
            item.name,
            item.sku(),
            item.quantity,
            w.pcs,
            money(item.price, cur),
            money(item.line_total(), cur)
        ));
    }
    if order.items.len() > MAX_ITEM_LINES {
        let n = order.items.len() - MAX_ITEM_LINES;
        lines.push(format!("… {}", w.more.replace("{n}", &n.to_string())));
    }
    lines.push(String::new());
    lines.push(format!("{}: {}", w.total, money(order.total_amount, cur)));
    if let Some(d) = &order.delivery {
        let mut parts: Vec<String> = d.method.iter().cloned().collect();
        if let Some(p) = d.price {
            parts.push(money(p, cur));
        }
        if !parts.is_empty() {
            lines.push(format!("{}: {}", w.delivery, parts.join(", ")));
        }
        if let Some(a) = &d.address {
            lines.push(format!("{}: {a}", w.address));
        }
    }
    if let Some(p) = &order.payment {
        let parts: Vec<&str> = [p.method.as_deref(), p.status.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        lines.push(format!("{}: {}", w.payment, parts.join(", ")));
    }
    if let Some(c) = &order.comment {
        let c: String = c.chars().take(MAX_COMMENT).collect();
        lines.push(format!("{}: {c}", w.comment));
    }
    if let Some(u) = &order.url {
        lines.push(format!("{}: {u}", w.link));
    }
    cut(lines)
}

/// Joins lines, dropping whole item lines from the end of the list until the text fits.
fn cut(lines: Vec<String>) -> String {
    let text = lines.join("\n");
    if text.chars().count() <= MAX_CHARS {
        return text;
    }
    let mut out = String::new();
    for line in lines {
        if out.chars().count() + line.chars().count() + 2 > MAX_CHARS {
            out.push('…');
            break;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "test assertions")]
    use serde_json::json;

    use super::*;

    fn order(items: usize) -> OrderDraft {
        let items: Vec<_> = (0..items)
            .map(|i| {
                json!({"product_id": format!("P{i}"), "name": format!("Choynak {i}"),
                            "quantity": 2, "price": "75000.50"})
            })
            .collect();
        OrderDraft::parse(&json!({
            "seller_id": "s-1", "order_number": "1042", "total_amount": 150001,
            "items": items, "customer": {"name": "Ali"},
            "delivery": {"method": "Kuryer", "address": "Toshkent, Chilonzor 5", "price": 20000},
            "payment": {"method": "Click", "status": "paid"},
            "comment": "Kechqurun qo'ng'iroq qiling", "url": "https://shop.example/o/1042"
        }))
        .unwrap()
    }

    #[test]
    fn the_note_lists_items_totals_delivery_payment_comment_and_link() {
        let t = render(&order(2), Lang::Uz);
        assert!(t.starts_with("Buyurtma #1042\n"), "{t}");
        assert!(
            t.contains("1. Choynak 0 (SKU P0) — 2 dona × 75 000.50 UZS = 150 001 UZS"),
            "{t}"
        );
        assert!(t.contains("Jami: 150 001 UZS"));
        assert!(t.contains("Yetkazib berish: Kuryer, 20 000 UZS"));
        assert!(t.contains("Manzil: Toshkent, Chilonzor 5"));
        assert!(t.contains("To'lov: Click, paid"));
        assert!(t.contains("Xaridor izohi: Kechqurun"));
        assert!(t.contains("https://shop.example/o/1042"));
        assert!(render(&order(1), Lang::Ru).starts_with("Заказ #1042"));
        assert!(render(&order(1), Lang::En).contains("Total: 150 001 UZS"));
    }

    #[test]
    fn long_orders_are_cut_at_whole_lines_and_say_how_many_were_left_out() {
        let t = render(&order(120), Lang::En);
        assert!(t.contains("40. Choynak 39"));
        assert!(!t.contains("41. Choynak 40"));
        assert!(t.contains("and 80 more items"));
        assert!(t.chars().count() <= MAX_CHARS);
        assert_eq!(render(&order(120), Lang::En), t, "deterministic");
    }
}
