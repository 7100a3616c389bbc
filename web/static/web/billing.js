// /billing/: the card goes from this page to Stripe (Stripe.js Card Element); only the
// payment method's id comes back to Archiva, in the form's hidden field.  In test mode
// an empty card form lets the chosen Stripe test payment method go instead.
(function () {
  "use strict";
  var form = document.getElementById("subscribe-form");
  if (!form || !form.dataset.stripeKey || typeof window.Stripe !== "function") return;
  var stripe = window.Stripe(form.dataset.stripeKey);
  var card = stripe.elements().create("card");
  card.mount("#card-element");
  var complete = false;
  card.on("change", function (event) { complete = event.complete; });
  var errors = document.getElementById("card-errors");
  var field = form.querySelector("input[name=payment_method]");
  var testChoice = form.querySelector("select[name=test_payment_method]");
  form.addEventListener("submit", function (event) {
    if (field.value || (!complete && testChoice)) return;
    event.preventDefault();
    if (!complete) {
      errors.textContent = "Enter the card's number, expiry date and security code.";
      return;
    }
    stripe.createPaymentMethod({ type: "card", card: card }).then(function (result) {
      if (result.error) {
        errors.textContent = result.error.message;
        return;
      }
      field.value = result.paymentMethod.id;
      form.submit();
    });
  });
})();
